"""The DiT families' part of the importers (engine/importers.py has the contract): diffusers'
train_dreambooth_lora_flux.py / train_dreambooth_lora_sd3.py flags, and an sd-scripts flux_train_network.py
config, onto the flow-matching fields (objective_flow.py).

Functions take the importers' _Collector as `c` (set, default, values, unmapped, notes); nothing here imports
engine.importers, which imports this module.
"""
from __future__ import annotations

from typing import Any

from engine.config import ConfigError

LABELS = {"flux1": "Flux.1", "sd3": "SD3"}

# ============================================================================= diffusers' DreamBooth-LoRA scripts

DIFFUSERS_SCRIPTS = {"train_dreambooth_lora_flux": "flux1", "train_dreambooth_lora_sd3": "sd3"}
_COMMON = {"train_batch_size": 4, "checkpointing_steps": 500, "lr_warmup_steps": 500, "rank": 4,
           "validation_epochs": 50, "adam_weight_decay": 1e-4, "prodigy_use_bias_correction": True,
           "prodigy_safeguard_warmup": True}
# their parse_args defaults where ours differ (sd3 has no --lora_alpha: it uses rank, as the SD scripts do)
DIFFUSERS_DEFAULTS = {
    "train_dreambooth_lora_flux": {**_COMMON, "lora_alpha": 4.0, "flux_guidance_value": 3.5},
    "train_dreambooth_lora_sd3": {**_COMMON, "max_sequence_length": 77},
}
_PRECONDITION = ("preconditions the output as EDM does (x0 = noisy - sigma * pred, against x0): that is the "
                 "flow loss weighted by sigma^2; here the flow prediction is trained unweighted (as with "
                 "--precondition_outputs=0)")


def diffusers_flag(c, family: str, name: str, value, source: str) -> bool:
    """A flag whose meaning in a DiT script differs from its name here; False: map it by name."""
    if family == "flux1" and name == "guidance_scale":  # the script's *training* guidance (dev's embedding)
        c.set("flux_guidance_value", value, source)
    elif name == "lora_layers":
        c.set("lora_target_modules", value, source)
    elif family == "sd3" and name == "lora_blocks":
        pass  # needs --lora_layers, which may come later: diffusers_hints
    elif family == "sd3" and name == "precondition_outputs":
        if str(value).strip() == "0":
            c.notes.append(f"{source}: accepted; the flow prediction is trained as it is here")
        else:
            c.unmapped.append(source)
            c.notes.append(f"{source}: not supported; it {_PRECONDITION}")
    else:
        return False
    return True


def diffusers_hints(c, family: str, args: dict[str, Any], filled: list[str]) -> None:
    """After the flags: model_family, --lora_blocks, and what the script does when flags are left out."""
    c.values.setdefault("model_family", family)
    blocks = args.get("lora_blocks")
    if family == "sd3" and blocks not in (None, True):
        source = f"--lora_blocks={blocks}"
        from engine.families.keys.sd3 import DEFAULT_TARGETS  # lazily: engine.families loads diffusers

        layers = c.values.get("lora_target_modules") or DEFAULT_TARGETS  # the sd3 script's, in its order
        try:  # the script: transformer_blocks.{block}.{module}; PEFT matches these as suffixes, as there
            picked = [f"transformer_blocks.{int(b)}.{m}" for b in str(blocks).split(",") if b.strip() for m in layers]
        except ValueError:
            raise ConfigError(f"{source}: block numbers separated by commas, e.g. 12,13,30") from None
        c.set("lora_target_modules", picked, source)
    if family == "sd3" and "precondition_outputs" not in args:
        c.notes.append(f"train_dreambooth_lora_sd3.py's default --precondition_outputs=1 {_PRECONDITION}")
    if family == "flux1" and not {"flow_shift", "flow_dynamic_shift"} & c.values.keys():
        # the script indexes scheduler.sigmas, which FlowMatchEulerDiscreteScheduler leaves unshifted when it
        # shifts by resolution (dev) and schnell's shift is 1: uniform sigmas either way
        c.values.update(flow_shift=1.0, flow_dynamic_shift=False)
        filled.append("flow_shift = 1.0 and flow_dynamic_shift = false (the script trains at the scheduler's "
                      "unshifted sigmas)")
    if family == "flux1" and args.get("train_text_encoder") and str(args.get("optimizer", "")).lower() != "prodigy":
        c.default("text_encoder_lr", 5e-6, filled)  # the script's default; with prodigy it uses learning_rate


# ============================================================================= sd-scripts flux_train_network.py

# add_flux_train_arguments, add_dit_training_arguments and the FLUX trainers' memory options
KOHYA_FLUX_KEYS = {"clip_l", "t5xxl", "ae", "model_type", "t5xxl_max_token_length", "apply_t5_attn_mask",
                   "guidance_scale", "timestep_sampling", "sigmoid_scale", "model_prediction_type",
                   "discrete_flow_shift", "weighting_scheme", "logit_mean", "logit_std", "mode_scale", "fp8_base",
                   "fp8_base_unet", "blocks_to_swap", "cpu_offload_checkpointing", "split_mode"}  # fp8_base: mapped
_FLUX_ONLY = {"ae", "model_type", "timestep_sampling", "model_prediction_type", "apply_t5_attn_mask", "guidance_scale"}
# networks/lora_flux.py trains every Linear of the double and single blocks; in diffusers' names, as suffixes.
# The single blocks' linear2 (proj_out) cannot be named so without the final layer's proj_out.
KOHYA_FLUX_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj",
                      "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2",
                      "ff_context.net.0.proj", "ff_context.net.2", "norm1.linear", "norm1_context.linear",
                      "norm.linear", "proj_mlp"]
_NOT_YET = {
    "fp8_base_unet": "not yet supported: quantize_base = \"fp8\" stores the whole transformer in fp8",
    "split_mode": "not yet supported (sd-scripts: deprecated for blocks_to_swap)",
    "cpu_offload_checkpointing": "not yet supported: checkpoints stay on the GPU",
    "apply_t5_attn_mask": "not supported: the T5 encodes without an attention mask, as diffusers' FluxPipeline "
                          "samples",
}


def swap_count_from_sd_scripts(n: int) -> int:
    """sd-scripts' Flux blocks_to_swap N (N//2 double + 2(N - N//2) single blocks: 2N single-block sizes, a double
    block weighing two singles) -> ours, counted from the end of one list (the 38 single blocks, then doubles)."""
    singles = 2 * n
    return singles if singles <= 38 else 38 + -(-(singles - 38) // 2)


def kohya_is_flux(flat: dict) -> bool:
    """A flux_train_network.py config: its network module or an option only FLUX.1's scripts have."""
    return flat.get("network_module") == "networks.lora_flux" or (
        bool(_FLUX_ONLY & flat.keys()) and "clip_g" not in flat)  # clip_g: sd3_train_network.py


FLUX1_DEV = "black-forest-labs/FLUX.1-dev"


def kohya_flux(c, flat: dict) -> None:
    chroma = flat.get("model_type") == "chroma"
    if chroma:
        c.unmapped.append("model_type = 'chroma'")
        c.notes.append("model_type = 'chroma': Chroma is not a model family here; the rest maps as for Flux.1")
    else:
        c.set("model_family", "flux1", "flux_train_network.py")
    for key in ("clip_l", "t5xxl", "ae"):
        if flat.get(key):
            c.unmapped.append(f"{key} = {flat[key]!r}")
            c.notes.append(f"{key} = {flat[key]!r}: Flux.1 loads its text encoders and VAE from the diffusers "
                           "folder or hub id in pretrained_model_name_or_path")
    model = str(flat.get("pretrained_model_name_or_path", ""))
    if model.endswith((".safetensors", ".sft")):
        # sd-scripts reads the rest from clip_l / t5xxl / ae files; diffusers needs the configs of a whole model
        c.set("pretrained_transformer_model_name_or_path", model, f"pretrained_model_name_or_path = {model!r}")
        c.set("pretrained_model_name_or_path", FLUX1_DEV, f"pretrained_model_name_or_path = {model!r}")
        c.notes.append(f"pretrained_model_name_or_path = {model!r}: a single-file Flux.1 checkpoint holds the "
                       "transformer only; it is pretrained_transformer_model_name_or_path here, and the text "
                       f"encoders, VAE and configs come from {FLUX1_DEV} (for schnell, or offline, give its "
                       "diffusers folder or hub id instead)")
    if flat.get("fp8_base"):  # sd-scripts keeps the frozen base in fp8 and computes in bf16: our fp8 weight-only
        c.set("quantize_base", "fp8", f"fp8_base = {flat['fp8_base']!r}")
    if flat.get("blocks_to_swap"):
        n = int(flat["blocks_to_swap"])
        ours = swap_count_from_sd_scripts(n)
        c.set("blocks_to_swap", ours, f"blocks_to_swap = {n!r}")
        c.notes.append(f"blocks_to_swap = {n}: sd-scripts swaps {n // 2} double and {2 * (n - n // 2)} single blocks; "
                       f"here the count runs from the end of Flux.1's 19 double + 38 single blocks, so {ours} swaps "
                       "about the same memory")
    for key, why in _NOT_YET.items():
        if flat.get(key):  # false, 0 and unset ask for nothing
            c.unmapped.append(f"{key} = {flat[key]!r}")
            c.notes.append(f"{key} = {flat[key]!r}: {why}")
    guidance = flat.get("guidance_scale", 3.5)
    c.set("flux_guidance_value", guidance, f"guidance_scale = {guidance!r}"
          + ("" if "guidance_scale" in flat else " (sd-scripts' default)"))
    if "t5xxl_max_token_length" in flat:
        c.set("max_sequence_length", flat["t5xxl_max_token_length"],
              f"t5xxl_max_token_length = {flat['t5xxl_max_token_length']!r}")
    prediction = flat.get("model_prediction_type", "sigma_scaled")
    if prediction != "raw":
        source = f"model_prediction_type = {prediction!r}"
        if "model_prediction_type" in flat:
            c.unmapped.append(source)
        c.notes.append(f"{source}{'' if 'model_prediction_type' in flat else ' (sd-scripts default)'}: here the "
                       "transformer's output is trained as the flow (noise - x0) itself, sd-scripts' 'raw'; "
                       "sigma_scaled preconditions it as SD3's EDM option does, additive adds the noisy input")
    _kohya_timesteps(c, flat, prediction)


def _kohya_timesteps(c, flat: dict, prediction: str) -> None:
    """timestep_sampling (get_noisy_model_input_and_timesteps) -> weighting_scheme and the shift fields."""
    sampling = flat.get("timestep_sampling", "sigma")
    source = f"timestep_sampling = {sampling!r}" + ("" if "timestep_sampling" in flat else " (sd-scripts default)")
    scale, shift = flat.get("sigmoid_scale", 1.0), flat.get("discrete_flow_shift", 3.0)
    if sampling == "sigma":  # SD3-style: weighting_scheme's density over the scheduler's sigmas, shifted
        scheme = {"uniform": "none"}.get(flat.get("weighting_scheme", "uniform"), flat.get("weighting_scheme"))
        if scheme in ("sigma_sqrt", "cosmap") and prediction == "raw":
            c.notes.append(f"weighting_scheme = {scheme!r} weights the loss only with sigma_scaled in sd-scripts; "
                           "with raw it draws uniformly: weighting_scheme = 'none'")
            scheme = "none"
        c.set("weighting_scheme", scheme, f"weighting_scheme = {flat.get('weighting_scheme', 'uniform')!r}")
        for key in ("logit_mean", "logit_std", "mode_scale"):
            if key in flat:
                c.set(key, flat[key], f"{key} = {flat[key]!r}")
        c.set("flow_shift", shift, f"{source}, discrete_flow_shift = {shift!r}")
        c.set("flow_dynamic_shift", False, source)
        return
    ignored = sorted(k for k in ("weighting_scheme", "logit_mean", "logit_std", "mode_scale") if k in flat)
    if ignored:
        c.notes.append(f"{source}: sd-scripts does not use {', '.join(ignored)} with it")
    if sampling == "uniform":
        c.set("weighting_scheme", "none", source)
    elif sampling in ("sigmoid", "shift", "flux_shift"):  # sigmoid(sigmoid_scale * N(0, 1)): a logit-normal
        c.set("weighting_scheme", "logit_normal", source)
        c.set("logit_mean", 0.0, source)
        c.set("logit_std", scale, f"sigmoid_scale = {scale!r}")
    else:
        c.unmapped.append(source)
        c.notes.append(f"{source}: sd-scripts has sigma, uniform, sigmoid, shift and flux_shift")
        return
    if sampling == "flux_shift":  # shifted by exp(mu), mu linear in the image's tokens from 0.5 to 1.15
        c.set("flow_dynamic_shift", True, source)
        c.notes.append(f"{source}: flow_dynamic_shift = true, with mu from the scheduler's base_shift and "
                       "max_shift (Flux.1's 0.5 and 1.15, the values sd-scripts fixes)")
        return
    c.set("flow_dynamic_shift", False, source)
    c.set("flow_shift", shift if sampling == "shift" else 1.0, source if sampling != "shift"
          else f"{source}, discrete_flow_shift = {shift!r}")
    if sampling != "uniform":
        c.notes.append(f"{source}: the same draw as weighting_scheme = 'logit_normal' (logit_std = sigmoid_scale) "
                       f"shifted by flow_shift = {c.values['flow_shift']}, except that here it is rounded to the "
                       "scheduler's 1000 training sigmas")


# ============================================================================= either importer


def drop_unet_only(c, family: str) -> None:
    """Settings of the UNet families that flow matching refuses (objective_flow.check_options): listed as
    unmapped instead, so the imported config trains."""
    from engine.objective_flow import UNET_ONLY  # lazily: it imports torch

    label = LABELS[family]
    refused = {k: v for k, v in UNET_ONLY.items() if c.values.get(k, v) != v and not (k == "snr_gamma" and
                                                                                   c.values[k] == 0)}
    if c.values.get("clip_skip", 1) > 1:
        refused["clip_skip"] = 1
    if c.values.get("conv_rank") is not None:
        refused.update(conv_rank=None, conv_alpha=None)
    for key in refused:
        if key not in c.values:
            continue
        source = c.sources.get(key, f"{key} = {c.values[key]!r}")
        del c.values[key]
        c.unmapped.append(source)
        c.notes.append(f"{source}: a UNet (SD 1.x/2.x, SDXL) setting; {label} trains by flow matching without it")
