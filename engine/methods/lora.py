"""LoRA through PEFT on the UNet and, optionally, the text encoder(s).

State dicts here use PEFT's own key names (`<module>.lora_A.weight` / `.lora_B.weight`); export.py turns
them into the diffusers and kohya files.
"""
from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from engine import export

TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _config(cfg, targets) -> LoraConfig:
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, init_lora_weights="gaussian",
                      target_modules=list(targets))


def prepare(comps, cfg) -> list[dict]:
    """Freeze the base, add LoRA layers, and return optimizer param groups (fp32 trainable params)."""
    comps.unet.requires_grad_(False)
    comps.vae.requires_grad_(False)
    for te in comps.text_encoders:
        te.requires_grad_(False)
    try:
        comps.unet.add_adapter(_config(cfg, cfg.lora_target_modules))
    except ValueError as e:  # PEFT: "Target modules {...} not found in the base model"
        raise ValueError(f"lora_target_modules = {cfg.lora_target_modules}: {e}") from None
    groups = [{"params": trainable_params(comps.unet), "lr": cfg.learning_rate, "name": "unet"}]
    if cfg.train_text_encoder:
        te_lr = cfg.text_encoder_lr if cfg.text_encoder_lr is not None else cfg.learning_rate
        for name, te in zip(comps.family.text_encoder_names, comps.text_encoders):
            te.add_adapter(_config(cfg, TEXT_ENCODER_TARGETS))
            groups.append({"params": trainable_params(te), "lr": te_lr, "name": name})
    return groups


def trainable_params(module) -> list[torch.nn.Parameter]:
    # A real list: a `filter` object would be used up by the optimizer and leave clipping nothing to clip.
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:  # fp16/bf16 bases: the grad scaler and small updates need fp32 trainable weights
        p.data = p.data.float()
    return params


def trained_modules(comps, cfg) -> dict[str, torch.nn.Module]:
    """component name -> module whose weights (or LoRA layers) are trained."""
    out = {"unet": comps.unet}
    if cfg.train_text_encoder:
        out.update(zip(comps.family.text_encoder_names, comps.text_encoders))
    return out


def state_dicts(modules: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(m, save_embedding_layers=False).items()}
            for name, m in modules.items()}


def adapter_metadata(module: torch.nn.Module) -> dict:
    """The LoraConfig as diffusers stores it beside the weights, so alpha (the scale) survives a reload."""
    return module.peft_config["default"].to_dict()


def load_state(modules: dict[str, torch.nn.Module], state: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, module in modules.items():
        result = set_peft_model_state_dict(module, state[name])
        missing = [k for k in getattr(result, "unexpected_keys", []) or [] if "lora" in k]
        if missing:
            raise ValueError(f"checkpoint LoRA weights do not fit {name}: {missing[:3]}")


def output_path(run_dir: Path, cfg) -> Path:
    return run_dir / f"{cfg.adaptor_name}.safetensors"


def write_outputs(folder: Path, cfg, comps, modules: dict, stats: dict) -> dict[str, str]:
    """The kohya file (ComfyUI, AUTOMATIC1111) and the diffusers folder (load_lora_weights)."""
    sds = state_dicts(modules)
    meta = {n: adapter_metadata(m) for n, m in modules.items()}
    kohya = export.write_kohya_lora(Path(folder) / f"{cfg.adaptor_name}.safetensors", comps.family, sds,
                                    cfg.lora_alpha, export.kohya_metadata(cfg, comps, stats))
    diff = export.write_diffusers_lora(Path(folder) / "diffusers", comps.family, sds, meta)
    return {"kohya": str(kohya), "diffusers": str(diff)}


def load_into_pipeline(pipe, run_dir: Path, cfg, scale: float = 1.0) -> None:
    """The run's diffusers-format LoRA on a loaded base pipeline, at `scale` (1.0: as trained)."""
    name = cfg.adaptor_name
    pipe.load_lora_weights(str(Path(run_dir) / "diffusers"), adapter_name=name)
    if scale != 1.0:
        pipe.set_adapters([name], adapter_weights=[scale])


model_card = export.model_card
