"""The flow-matching objective of the DiT families (Flux.1, SD3/SD3.5, Z-Image, Qwen-Image): x_t = (1 - s) x0 + s noise, the target is
noise - x0, and s is drawn as diffusers' train_dreambooth_lora_{flux,sd3}.py draw it, under their names:

- weighting_scheme: logit_normal (logit_mean, logit_std), mode (mode_scale), or uniform (none, sigma_sqrt,
  cosmap); sigma_sqrt and cosmap also weight the loss (compute_loss_weighting_for_sd3).
- the draw picks one of the schedule's T training sigmas (1 - i/T, as the scripts index the scheduler's
  timesteps), then shifts it: by flow_shift (default: the scheduler's `shift`) or, where the scheduler shifts by
  resolution (flow_dynamic_shift; Flux.1 dev), by exp(mu) with mu interpolated between base_shift and max_shift
  over the image's token count, as the pipeline samples (and as sd-scripts' `flux_shift` trains).
"""
from __future__ import annotations

import math

import torch

from engine.objective import clean_latents, drop_captions, elementwise_loss

WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")


def shift_sigmas(sigmas: torch.Tensor, cfg, scheduler_config, image_tokens: int) -> torch.Tensor:
    dynamic = cfg.flow_dynamic_shift if cfg.flow_dynamic_shift is not None else \
        bool(scheduler_config.get("use_dynamic_shifting", False))
    if dynamic:
        c = scheduler_config
        slope = (c.get("max_shift", 1.15) - c.get("base_shift", 0.5)) / \
            (c.get("max_image_seq_len", 4096) - c.get("base_image_seq_len", 256))
        mu = c.get("base_shift", 0.5) + slope * (image_tokens - c.get("base_image_seq_len", 256))
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    shift = cfg.flow_shift if cfg.flow_shift is not None else float(scheduler_config.get("shift", 1.0))
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def draw_sigmas(cfg, family, scheduler_config, bsz: int, image_tokens: int, gen, device) -> torch.Tensor:
    scheme = cfg.weighting_scheme or family.default_weighting
    if scheme == "logit_normal":
        u = torch.sigmoid(torch.normal(cfg.logit_mean, cfg.logit_std, (bsz,), generator=gen, device=device))
    else:
        u = torch.rand((bsz,), generator=gen, device=device)
        if scheme == "mode":
            u = 1 - u - cfg.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    steps = int(scheduler_config.get("num_train_timesteps", 1000))
    index = (u * steps).long().clamp(0, steps - 1)
    return shift_sigmas(1.0 - index.float() / steps, cfg, scheduler_config, image_tokens)


def loss_weighting(scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    if scheme == "sigma_sqrt":
        return sigmas.float() ** -2.0
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas.float() + 2 * sigmas.float() ** 2))
    return torch.ones_like(sigmas, dtype=torch.float32)


def flow_loss(batch, comps, model, encode_text, cfg, device, weight_dtype, gen) -> torch.Tensor:
    """One micro-batch's loss. Fixed timesteps in the batch (the validation loss) are used as sigmas t / T."""
    family = comps.family
    latents = clean_latents(batch, comps, device, weight_dtype, gen)
    noise = torch.randn(latents.shape, generator=gen, device=device, dtype=latents.dtype)
    bsz, _, h, w = latents.shape
    config = dict(comps.noise_scheduler.config)
    fixed = batch.get("timesteps")
    if fixed is not None:
        sigmas = fixed.to(device).float() / int(config.get("num_train_timesteps", 1000))
    else:
        sigmas = draw_sigmas(cfg, family, config, bsz, family.image_tokens(h, w), gen, device)
    s = sigmas.view(bsz, 1, 1, 1).to(latents.dtype)
    noisy = (1 - s) * latents + s * noise
    hidden, pooled = encode_text(drop_captions(cfg, batch["captions"], gen))
    pred = family.predict(comps, model, noisy, sigmas.to(device), hidden, pooled, cfg, weight_dtype)
    target = noise - latents
    weights = loss_weighting(cfg.weighting_scheme or family.default_weighting, sigmas).view(bsz, 1, 1, 1)
    per_elem = elementwise_loss(pred, target, cfg, torch.zeros(bsz, dtype=torch.long, device=device), None)
    return (weights * per_elem).mean(dim=(1, 2, 3)).mean()


# Settings of the UNet (noise-prediction) objective, refused for flow families, and the reverse:
# name -> the value that means "unset"
UNET_ONLY = {"snr_gamma": None, "noise_offset": 0.0, "prediction_type": None, "do_edm_style_training": False}
FLOW_ONLY = {"weighting_scheme": None, "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29,
             "flow_shift": None, "flow_dynamic_shift": None, "flux_guidance_value": 1.0, "max_sequence_length": None}


def check_options(cfg, family) -> None:
    """Options that belong to one objective are refused for the other, naming both."""
    from engine.config import ConfigError

    problems = option_problems(cfg, family)
    if problems:
        raise ConfigError(problems[0][1])


def option_problems(cfg, family) -> list[tuple[str, str]]:
    """(key, message) for each setting this family's objective or transformer cannot take."""
    out: list[tuple[str, str]] = []
    flow = getattr(family, "objective", "noise") == "flow"
    for key, unset in (UNET_ONLY if flow else FLOW_ONLY).items():
        value = getattr(cfg, key)
        if value == unset or (key == "snr_gamma" and value == 0):
            continue
        if flow:
            out.append((key, f"{key} = {value!r} belongs to the noise-prediction objective of the UNet families (SD "
                             f"1.x/2.x, SDXL); {family.label} trains by flow matching: remove {key} (flow matching "
                             "has weighting_scheme, logit_mean, logit_std, mode_scale and flow_shift)"))
        else:
            out.append((key, f"{key} = {value!r} belongs to the flow-matching objective of the DiT families (Flux.1, "
                             f"SD3); {family.label} trains by noise prediction: remove {key}"))
    if not flow:
        if cfg.pretrained_transformer_model_name_or_path:
            out.append(("pretrained_transformer_model_name_or_path", "pretrained_transformer_model_name_or_path "
                        f"replaces a DiT family's transformer; {family.label} has a UNet: give a single-file "
                        "checkpoint as pretrained_model_name_or_path instead"))
        return out
    if cfg.loss_type != "l2" and cfg.huber_schedule != "constant":
        out.append(("huber_schedule", f"huber_schedule = {cfg.huber_schedule!r} follows the UNet's noise schedule; "
                                      f"{family.label} trains by flow matching: use huber_schedule = \"constant\""))
    if cfg.clip_skip > 1:
        out.append(("clip_skip", f"clip_skip = {cfg.clip_skip} applies to SD 1.x/2.x; {family.label} uses its text "
                                 "encoders as its pipeline does: set clip_skip = 1"))
    if cfg.attention == "eager":
        out.append(("attention", f"attention = \"eager\" swaps the UNet's attention processor; {family.label}'s "
                                 "transformer keeps its own: use attention = \"sdpa\""))
    adaptor = cfg.method in ("lora", "dreambooth")
    if adaptor and cfg.conv_rank:
        out.append(("conv_rank", f"conv_rank = {cfg.conv_rank} trains the UNet's convolutions; {family.label}'s "
                                 "transformer has none: remove conv_rank"))
    if adaptor and cfg.lora_type != "lora" and cfg.quantize_base == "nf4":
        # peft's LoHa / LoKr layers size their factors from the base weight's shape, which nf4 packs
        out.append(("lora_type", f"lora_type = {cfg.lora_type!r} cannot train on {family.label}'s nf4-quantized "
                                 "transformer (peft's LoHa / LoKr layers read the weight's shape, which nf4 packs): "
                                 "use quantize_base = \"int8\" or \"none\", or lora_type = \"lora\""))
    if cfg.method == "textual_inversion":
        out.append(("method", f"method = \"textual_inversion\" is not yet available for {family.label}: train a "
                              "LoRA (method = \"lora\") instead"))
    full = cfg.method == "full" or (cfg.method == "dreambooth" and cfg.dreambooth_full)
    if full and not hasattr(family, "checkpoint_state_dict"):
        what = "dreambooth_full = true" if cfg.method == "dreambooth" else "method = \"full\""
        out.append(("method", f"{what} is not yet available for {family.label} (its single-file checkpoint is not "
                              "written yet): train a LoRA (method = \"lora\" or \"dreambooth\") instead"))
    if (adaptor or full) and cfg.train_text_encoder and not family.kohya_te_prefixes:
        out.append(("train_text_encoder", f"train_text_encoder: {family.label}'s text encoder is an LLM, which is "
                                          "not trained here (as diffusers' scripts leave it): set "
                                          "train_text_encoder = false"))
    if cfg.flux_guidance_value != 1.0 and family.name != "flux1":
        out.append(("flux_guidance_value", f"flux_guidance_value is Flux.1 dev's guidance embedding; {family.label} "
                                           "has none"))
    return out
