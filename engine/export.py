"""Writers for the run folder's adaptor files (DESIGN.md §3, §4), each written atomically.

- kohya file `{name}.safetensors`: built straight from the PEFT state dicts (not diffusers'
  convert_state_dict_to_kohya, which stores alpha = rank as int64), with the real alpha as a float32 scalar,
  plus the ss_* and modelspec.* metadata that ComfyUI, AUTOMATIC1111 and kohya's tools read.
- diffusers file `diffusers/pytorch_lora_weights.safetensors`, with each LoraConfig stored as adapter
  metadata so `load_lora_weights` uses the trained alpha.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from pathlib import Path

import torch

from engine import atomic

DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def canonical_keys(component: str, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Text-encoder keys as every loader knows them (`text_model.encoder.layers...`).

    transformers 5 dropped CLIPTextModel's `text_model` wrapper (CLIPTextModelWithProjection kept it), so
    PEFT names the layers `encoder.layers...`. kohya, ComfyUI, AUTOMATIC1111 and transformers-4 stacks
    expect `lora_te_text_model_encoder_layers_...`; diffusers 0.42 reads either form. The projection of
    CLIPTextModelWithProjection sits beside `text_model` (`text_projection.weight`) in every layout.
    """
    if not component.startswith("text_encoder"):
        return state_dict
    return {k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v
            for k, v in state_dict.items()}


_LORA_NAMES = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight",
               "lora_magnitude_vector": "dora_scale"}
_LYCORIS_NAMES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2",
                  "lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def _split_key(key: str) -> tuple[str, str]:
    """`a.b.to_q.lora_A.weight` -> ("a.b.to_q", "lora_A.weight"); likewise `.hada_w1_a`, `.lokr_w2` ..."""
    for part in (*_LORA_NAMES, *_LYCORIS_NAMES):
        if key.endswith("." + part):
            return key[: -len(part) - 1], part
    raise ValueError(f"unexpected adaptor key {key!r}")


def peft_to_kohya(state_dict: dict[str, torch.Tensor], prefix: str, alpha) -> dict[str, torch.Tensor]:
    """`a.b.to_q.lora_A.weight` -> `{prefix}_a_b_to_q.lora_down.weight` (+ `.lora_up.weight`, `.alpha`).

    `alpha`: one value, or {module path: (alpha, rank)} as PEFT built each layer (conv layers may differ)."""
    out: dict[str, torch.Tensor] = {}
    for module, parts in group_modules(state_dict).items():
        a, rank = alpha[module] if isinstance(alpha, dict) else (alpha, None)
        name = f"{prefix}_{module.replace('.', '_')}"
        out.update({f"{name}.{part}": value for part, value in kohya_module(parts, a, rank).items()})
    return out


def group_modules(state_dict: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """PEFT keys grouped by module: {"a.b.to_q": {"lora_A.weight": ..., "lora_B.weight": ...}}."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        module, part = _split_key(key)
        modules.setdefault(module, {})[part] = value
    return modules


def kohya_module(parts: dict[str, torch.Tensor], a: float, rank: int | None) -> dict[str, torch.Tensor]:
    """One module's PEFT tensors under kohya / LyCORIS names, with `alpha` (a float32 scalar).

    LoHa / LoKr keep their names (`hada_w1_a`, `lokr_w1` ...); DoRA's magnitude becomes kohya's `dora_scale`
    (one value per output channel, shaped [out, 1, ...])."""
    if "lokr_w1" in parts and "lokr_w2" in parts:
        # LyCORIS loaders (AUTOMATIC1111, ComfyUI's calculate_weight) scale a LoKr by alpha / rank only when a factor
        # is split (`_a`/`_b`), by 1 otherwise; PEFT always scales by alpha / r: fold PEFT's scale into lokr_w1.
        # alpha = w2 rows / w1 rows, the "rank" other ComfyUI versions divide an unsplit LoKr's alpha by: scale 1
        # in every reading.
        parts = {**parts, "lokr_w1": parts["lokr_w1"] * (a / rank)}
        a = float(max(1, parts["lokr_w2"].shape[0] // parts["lokr_w1"].shape[0]))
    out = {}
    for part, value in parts.items():
        if part == "lora_magnitude_vector":
            value = value.reshape(value.numel(), *([1] * (parts["lora_B.weight"].dim() - 1)))
        out[_LORA_NAMES.get(part, part)] = value.contiguous()
    out["alpha"] = torch.tensor(float(a), dtype=torch.float32)
    return out


def is_lycoris(state_dicts: dict[str, dict[str, torch.Tensor]]) -> bool:
    """Any component trained as LoHa, LoKr or DoRA (not plain LoRA)."""
    kinds = (*_LYCORIS_NAMES, "lora_magnitude_vector")
    return any(_split_key(k)[1] in kinds for sd in state_dicts.values() for k in sd)


def kohya_state_dict(family, state_dicts: dict[str, dict[str, torch.Tensor]], alpha) -> dict:
    """alpha: one value for every module, or {component: {module path: (alpha, rank)}}. A DiT family writes its
    own layout (Flux.1: BFL's fused modules; SD3: diffusers' names); its LoHa / LoKr / DoRA, LyCORIS' layout."""
    if is_lycoris(state_dicts) and hasattr(family, "lycoris_state_dict"):
        return family.lycoris_state_dict(state_dicts, alpha)  # a DiT's LoHa / LoKr / DoRA (keys/lycoris.py)
    own = getattr(family, "single_file_state_dict", None)
    if own is not None:
        return own(state_dicts, alpha)
    prefixes = {"unet": "lora_unet", **family.kohya_te_prefixes}
    out: dict[str, torch.Tensor] = {}
    for component, sd in state_dicts.items():
        a = alpha[component] if isinstance(alpha, dict) else alpha
        if isinstance(a, dict):
            a = canonical_keys(component, a)
        out.update(peft_to_kohya(canonical_keys(component, sd), prefixes[component], a))
    return out


def write_kohya_lora(path: Path, family, state_dicts, alpha: float, metadata: dict[str, str]) -> Path:
    atomic.save_safetensors(kohya_state_dict(family, state_dicts, alpha), Path(path), metadata)
    return Path(path)


def write_diffusers_lora(out_dir: Path, family, state_dicts, adapter_metadata: dict[str, dict]) -> Path:
    """diffusers' own writer (so its loader reads it back), into a temp folder, then renamed into place."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    for component, sd in state_dicts.items():
        name = family.denoiser_name if component == "unet" else component  # "transformer" for the DiTs
        kwargs[f"{name}_lora_layers"] = canonical_keys(component, sd)
        kwargs[f"{name}_lora_adapter_metadata"] = adapter_metadata[component]
    tmp = atomic.temp_dir(out_dir, "lora")
    size = sum(v.numel() * v.element_size() for sd in state_dicts.values() for v in sd.values())
    try:
        with atomic.disk_full_guard(out_dir / DIFFUSERS_WEIGHT_NAME, size):
            family.pipeline_class.save_lora_weights(str(tmp), safe_serialization=True, **kwargs)
        atomic.normal_modes(tmp)
        os.replace(tmp / DIFFUSERS_WEIGHT_NAME, out_dir / DIFFUSERS_WEIGHT_NAME)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / DIFFUSERS_WEIGHT_NAME


def _iso(ts: float | None) -> str:
    return _dt.datetime.fromtimestamp(ts or 0, _dt.timezone.utc).isoformat(timespec="seconds")


def kohya_metadata(cfg, comps, stats: dict) -> dict[str, str]:
    """ss_* keys as kohya's sd-scripts write them, and modelspec.* (all values are strings)."""
    family = comps.family
    pred = family.prediction_type(comps)
    res = f"{cfg.resolution}x{cfg.resolution}"
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": repr(float(cfg.lora_alpha)),
        "ss_network_args": json.dumps({"target_modules": cfg.lora_target_modules}),
        "ss_base_model_version": family.base_model_version(comps),
        "ss_v2": str(family.name == "sd2"),
        "ss_v_parameterization": str(pred == "v_prediction"),
        "ss_output_name": cfg.adaptor_name,
        "ss_sd_model_name": comps.source.name,
        "ss_vae_name": cfg.pretrained_vae_model_name_or_path or "",
        "ss_training_started_at": str(stats.get("started_at", 0.0)),
        "ss_training_finished_at": str(stats.get("finished_at", 0.0)),
        "ss_learning_rate": repr(float(cfg.learning_rate)),
        "ss_text_encoder_lr": repr(float(cfg.text_encoder_lr if cfg.text_encoder_lr is not None
                                         else cfg.learning_rate)) if cfg.train_text_encoder else "0.0",
        "ss_unet_lr": repr(float(cfg.learning_rate)),
        "ss_num_train_images": str(stats.get("num_train_images", 0)),
        "ss_num_epochs": str(stats.get("epoch", 0)),
        "ss_epoch": str(stats.get("epoch", 0)),
        "ss_steps": str(stats.get("step", 0)),
        "ss_max_train_steps": str(stats.get("total_steps", 0)),
        "ss_batch_size_per_device": str(cfg.train_batch_size),
        "ss_gradient_accumulation_steps": str(cfg.gradient_accumulation_steps),
        "ss_lr_scheduler": cfg.lr_scheduler,
        "ss_lr_warmup_steps": str(cfg.lr_warmup_steps),
        "ss_optimizer": cfg.optimizer,
        "ss_resolution": f"({cfg.resolution}, {cfg.resolution})",
        "ss_mixed_precision": cfg.mixed_precision,
        "ss_seed": str(cfg.seed),
        "ss_noise_offset": repr(float(cfg.noise_offset)),
        "ss_min_snr_gamma": "None" if cfg.snr_gamma is None else repr(float(cfg.snr_gamma)),
        "ss_max_grad_norm": repr(float(cfg.max_grad_norm)),
        "ss_gradient_checkpointing": str(cfg.gradient_checkpointing),
        "ss_random_flip": str(cfg.random_flip),
        "ss_cache_latents": str(cfg.cache_latents),
        "ss_enable_bucket": str(cfg.enable_bucket),
        "ss_min_bucket_reso": str(cfg.min_bucket_reso) if cfg.enable_bucket else "None",
        "ss_max_bucket_reso": str(cfg.max_bucket_reso) if cfg.enable_bucket else "None",
        "ss_bucket_no_upscale": str(cfg.bucket_no_upscale),
        "ss_bucket_info": json.dumps({"buckets": {str(i): b for i, b in enumerate(stats.get("buckets", []))}})
        if cfg.enable_bucket else "null",
        "ss_tag_frequency": json.dumps(stats.get("tag_frequency", {})),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": family.modelspec_architecture(comps, "lora"),
        "modelspec.implementation": ("https://github.com/Stability-AI/generative-models"
                                     if family.name == "sdxl" else "diffusers"),
        "modelspec.title": cfg.adaptor_name,
        "modelspec.date": _iso(stats.get("finished_at") or stats.get("started_at")),
        "modelspec.resolution": res,
        "modelspec.prediction_type": pred,
        "modelspec.trigger_phrase": cfg.trigger_word,
    }
    return meta


def model_card(cfg, comps, stats: dict, outputs: dict[str, str], samples: list[str]) -> str:
    fam = comps.family
    trig = cfg.trigger_word
    kind = {"loha": "LoHa", "lokr": "LoKr"}.get(cfg.lora_type, "DoRA" if cfg.use_dora else "LoRA")
    where = "ComfyUI" if fam.objective == "flow" else "ComfyUI and AUTOMATIC1111"  # A1111 loads no DiT
    layout = "LyCORIS" if kind in ("LoHa", "LoKr") or (kind == "DoRA" and fam.objective == "flow") else "kohya"
    lines = [
        f"# {cfg.adaptor_name}",
        "",
        f"A {kind} for **{comps.source.name}** ({fam.label}), trained with Adaptor Studio.",
        "",
        f"- Trigger word: `{trig}`" if trig else "- Trigger word: none",
        f"- Steps: {stats.get('step')} ({stats.get('epoch')} epochs) on {stats.get('num_train_images')} images",
        f"- Rank {cfg.rank}, alpha {cfg.lora_alpha:g} (scale {cfg.lora_alpha / cfg.rank:g}), "
        f"learning rate {cfg.learning_rate:g}, {cfg.lr_scheduler} schedule, optimizer {cfg.optimizer}",
        f"- Resolution {cfg.resolution}, batch {cfg.train_batch_size} x {cfg.gradient_accumulation_steps} "
        f"accumulation, mixed precision {cfg.mixed_precision}, seed {cfg.seed}",
        f"- Text encoder trained: {'yes' if cfg.train_text_encoder else 'no'}",
        "",
        "## Files",
        f"- `{cfg.adaptor_name}.safetensors`: {layout} format, for {where} (`models/loras/`).",
        "- `diffusers/pytorch_lora_weights.safetensors`: diffusers format." if "peft" not in outputs else
        "- `peft/<component>/`: peft's own adapter folders (diffusers has no LoHa / LoKr loader).",
        "- `config.toml`: the exact settings; `python -m engine.train config.toml` trains it again.",
    ]
    run = outputs.get('run_dir', '.')
    load = (f"pipe.load_lora_weights(\"{run}/diffusers\")" if "peft" not in outputs else
            f"engine.methods.lora.load_peft_folders(pipe, \"{run}/peft\", \"{cfg.adaptor_name}\")  # Adaptor Studio's")
    return finish_card(lines, [
        f"pipe = {fam.pipeline_class.__name__}.from_pretrained(BASE_MODEL)", load,
        f"image = pipe(\"{(trig + ', ') if trig else ''}{cfg.validation_prompt or 'your prompt'}\").images[0]",
    ], samples)


def finish_card(lines: list[str], usage: list[str], samples: list[str]) -> str:
    """A model card's "Use with diffusers" code block and sample images, after its own lines."""
    lines = [*lines, "", "## Use with diffusers", "```python", *usage, "```"]
    if samples:
        lines += ["", "## Samples", ""] + [f"![sample]({s})" for s in samples]
    return "\n".join(lines) + "\n"


def write_model_card(run_dir: Path, text: str) -> Path:
    atomic.write_bytes(Path(run_dir) / "README.md", text.encode("utf-8"))
    return Path(run_dir) / "README.md"
