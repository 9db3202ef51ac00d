"""The training objective: noise, timesteps, the prediction target and the (min-SNR weighted) loss."""
from __future__ import annotations

import hashlib
import math
import random

import torch


def step_generator(seed: int, micro_step: int, process_index: int, device, num_processes: int = 1) -> torch.Generator:
    """Noise and timesteps come from (seed, micro-batch) alone, not from the global RNG's history, so a resumed
    run draws exactly what the uninterrupted run would have drawn. The micro-batch is counted across processes
    in the order the data loader deals them out (process p of N gets batch N * micro_step + p), so N processes
    draw what one process accumulating N micro-batches per step draws for the same batches."""
    batch = micro_step * num_processes + process_index
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + batch * 101) % (2**63 - 1))


def posterior_generator(gen: torch.Generator) -> torch.Generator:
    """The VAE posterior's draw gets its own stream, seeded from gen's position (host-side state, no sync):
    gen's noise and timesteps are then the same draws with and without cache_latents."""
    digest = hashlib.sha256(gen.get_state().numpy().tobytes()).digest()
    return torch.Generator(device=gen.device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def clean_latents(batch, comps, device, weight_dtype, gen) -> torch.Tensor:
    """The batch's latents, normalised as the denoiser sees them: cached, or encoded now (the posterior's draw
    on its own stream, so cached and uncached runs draw the same noise and timesteps)."""
    if "latents" in batch:
        return batch["latents"].to(device, weight_dtype)
    px = batch["pixel_values"].to(device, comps.vae.dtype)
    with torch.no_grad():
        return comps.family.encode_latents(comps, px, posterior_generator(gen)).to(weight_dtype)


def drop_captions(cfg, captions: list[str], gen) -> list[str]:
    """caption_dropout_rate: drawn on the host from the step's seed (a device draw would need a sync every step)."""
    if not cfg.caption_dropout_rate:
        return captions
    pick = random.Random(gen.initial_seed())
    return ["" if pick.random() < cfg.caption_dropout_rate else c for c in captions]


def compute_loss(batch, comps, unet, encode_text, cfg, device, weight_dtype, prediction_type, alphas_cumprod, gen):
    """One micro-batch's loss. `encode_text(captions) -> (hidden states, pooled or None)`. A family with its own
    objective (flow matching) computes it there."""
    family = comps.family
    own = getattr(family, "compute_loss", None)
    if own is not None:
        return own(batch, comps, unet, encode_text, cfg, device, weight_dtype, gen)
    latents = clean_latents(batch, comps, device, weight_dtype, gen)
    noise = torch.randn(latents.shape, generator=gen, device=device, dtype=latents.dtype)
    if cfg.noise_offset:
        noise = noise + cfg.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, generator=gen,
                                                       device=device, dtype=latents.dtype)
    bsz = latents.shape[0]
    timesteps = batch.get("timesteps")  # fixed ones (the validation loss), else drawn
    if timesteps is None:
        timesteps = torch.randint(0, comps.noise_scheduler.config.num_train_timesteps, (bsz,), generator=gen,
                                  device=device).long()
    edm = edm_schedule(comps.noise_scheduler, device) if cfg.do_edm_style_training else None
    if edm is not None:  # the model is conditioned on the Euler schedule's timestep of each sampled sigma
        timesteps_in, sigmas = edm.timesteps[timesteps], edm.sigmas[timesteps].view(bsz, 1, 1, 1)
        noisy = latents + noise * sigmas.to(latents.dtype)
    else:
        timesteps_in = timesteps
        noisy = comps.noise_scheduler.add_noise(latents, noise, timesteps)
    hidden, pooled = encode_text(drop_captions(cfg, batch["captions"], gen))
    if cfg.channels_last:
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    added = family.added_cond(comps, batch, pooled, device, weight_dtype)
    kwargs = {"added_cond_kwargs": added} if added is not None else {}
    model_in = noisy / ((sigmas**2 + 1) ** 0.5).to(noisy.dtype) if edm is not None else noisy
    pred = unet(model_in, timesteps_in, hidden.to(weight_dtype), return_dict=False, **kwargs)[0]
    # prediction_type is epsilon or v_prediction (the loop checks it once, at setup)
    if edm is not None:
        # EDM preconditioning of the output (Karras et al. 2022, section 5), as diffusers' SDXL DreamBooth
        # script does for non-EDM schedulers: the prediction becomes a clean-latent estimate, weighted by 1/sigma^2
        pred, noisy_f = pred.float(), noisy.float()
        if prediction_type == "epsilon":
            pred = pred * (-sigmas) + noisy_f
        else:
            pred = pred * (-sigmas / (sigmas**2 + 1) ** 0.5) + noisy_f / (sigmas**2 + 1)
        per_sample = (elementwise_loss(pred, latents.float(), cfg, timesteps, alphas_cumprod)
                      * sigmas.float() ** -2.0).mean(dim=(1, 2, 3))
        return per_sample.mean()
    if prediction_type == "v_prediction":
        target = comps.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    per_sample = elementwise_loss(pred, target, cfg, timesteps, alphas_cumprod).mean(dim=(1, 2, 3))
    if not cfg.snr_gamma:  # unset, or 0 = off as in kohya (a gamma of 0 would weight every loss by 0)
        return per_sample.mean()
    # Min-SNR weighting (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v-prediction
    ac = alphas_cumprod[timesteps].float()
    snr = ac / (1 - ac)
    weights = torch.clamp(snr, max=cfg.snr_gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
    return (per_sample * weights).mean()


def huber_threshold(cfg, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """c per sample, [B, 1, 1, 1]: constant, or kohya's schedules over the timestep."""
    c = torch.full(timesteps.shape, cfg.huber_c, dtype=torch.float32, device=timesteps.device)
    if cfg.huber_schedule == "exponential":
        steps = len(alphas_cumprod)
        c = torch.exp(math.log(cfg.huber_c) / steps * timesteps.float())
    elif cfg.huber_schedule == "snr":
        ac = alphas_cumprod[timesteps].float()
        sigmas = ((1.0 - ac) / ac) ** 0.5
        c = (1 - cfg.huber_c) / (1 + sigmas) ** 2 + cfg.huber_c
    return c.view(-1, 1, 1, 1)


def elementwise_loss(pred: torch.Tensor, target: torch.Tensor, cfg, timesteps, alphas_cumprod) -> torch.Tensor:
    """l2: (x-y)^2; huber: 2c(sqrt((x-y)^2+c^2)-c); smooth_l1: 2(sqrt((x-y)^2+c^2)-c) (diffusers and kohya)."""
    diff2 = (pred.float() - target.float()) ** 2
    if cfg.loss_type == "l2":
        return diff2
    c = huber_threshold(cfg, timesteps, alphas_cumprod)
    robust = 2 * (torch.sqrt(diff2 + c**2) - c)
    return robust * c if cfg.loss_type == "huber" else robust


class EdmSchedule:
    def __init__(self, timesteps: torch.Tensor, sigmas: torch.Tensor):
        self.timesteps, self.sigmas = timesteps, sigmas


_EDM_CACHE: dict = {}


def edm_schedule(noise_scheduler, device) -> EdmSchedule:
    """The Euler schedule's (timestep, sigma) for each training index 0..T-1, ascending in noise, built from the
    base's noise-schedule config (what diffusers' script gets from EulerDiscreteScheduler.from_pretrained)."""
    key = (id(noise_scheduler), str(device))
    if key not in _EDM_CACHE:
        from diffusers import EulerDiscreteScheduler

        euler = EulerDiscreteScheduler.from_config(noise_scheduler.config)
        # diffusers indexes scheduler.timesteps (descending noise) with a uniform index: the same distribution
        ts, sig = euler.timesteps.flip(0), euler.sigmas[:-1].flip(0)
        _EDM_CACHE[key] = EdmSchedule(ts.to(device), sig.to(device, torch.float32))
    return _EDM_CACHE[key]
