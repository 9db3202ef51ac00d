"""The training objective: noise, timesteps, the prediction target and the (min-SNR weighted) loss."""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F


def step_generator(seed: int, micro_step: int, process_index: int, device) -> torch.Generator:
    """Noise and timesteps come from (seed, micro step, process) alone, not from the global RNG's history,
    so a resumed run draws exactly what the uninterrupted run would have drawn."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + micro_step * 101 + process_index)
                                                      % (2**63 - 1))


def compute_loss(batch, comps, unet, encode_text, cfg, device, weight_dtype, prediction_type, alphas_cumprod, gen):
    """One micro-batch's loss. `encode_text(captions) -> (hidden states, pooled or None)`."""
    family = comps.family
    if "latents" in batch:
        latents = batch["latents"].to(device, weight_dtype)
    else:
        px = batch["pixel_values"].to(device, comps.vae.dtype)
        with torch.no_grad():
            latents = comps.vae.encode(px).latent_dist.sample(generator=gen)
        latents = ((latents - comps.vae_shift_factor) * comps.vae_scaling_factor).to(weight_dtype)
    noise = torch.randn(latents.shape, generator=gen, device=device, dtype=latents.dtype)
    if cfg.noise_offset:
        noise = noise + cfg.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, generator=gen,
                                                       device=device, dtype=latents.dtype)
    bsz = latents.shape[0]
    timesteps = torch.randint(0, comps.noise_scheduler.config.num_train_timesteps, (bsz,), generator=gen,
                              device=device).long()
    noisy = comps.noise_scheduler.add_noise(latents, noise, timesteps)
    captions = batch["captions"]
    if cfg.caption_dropout_rate:
        # drawn on the host from the step's seed: a device draw would need a sync every step to read back
        pick = random.Random(gen.initial_seed())
        captions = ["" if pick.random() < cfg.caption_dropout_rate else c for c in captions]
    hidden, pooled = encode_text(captions)
    if cfg.channels_last:
        noisy = noisy.contiguous(memory_format=torch.channels_last)
    added = family.added_cond(comps, batch, pooled, device, weight_dtype)
    kwargs = {"added_cond_kwargs": added} if added is not None else {}
    pred = unet(noisy, timesteps, hidden.to(weight_dtype), return_dict=False, **kwargs)[0]
    # prediction_type is epsilon or v_prediction (the loop checks it once, at setup)
    if prediction_type == "v_prediction":
        target = comps.noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    if not cfg.snr_gamma:  # unset, or 0 = off as in kohya (a gamma of 0 would weight every loss by 0)
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    # Min-SNR weighting (Hang et al. 2023): min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v-prediction
    ac = alphas_cumprod[timesteps].float()
    snr = ac / (1 - ac)
    weights = torch.clamp(snr, max=cfg.snr_gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()
