"""LoRA and its variants through PEFT on the UNet and, optionally, the text encoder(s): LoRA (with DoRA,
dropout and conv layers), LoHa and LoKr.

State dicts here use PEFT's own key names (`<module>.lora_A.weight` / `.lora_B.weight`,
`.lora_magnitude_vector`, `.hada_w1_a` ..., `.lokr_w1` ...); export.py turns them into the diffusers and
kohya / LyCORIS files.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from peft import LoHaConfig, LoKrConfig, LoraConfig, PeftConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from engine import atomic, export
from engine.lora_load import load_lora

TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
# the UNet's convolutions kohya's conv_dim trains: resnet 3x3 convs, their 1x1 shortcuts, down/upsamplers
CONV_TARGETS = ["conv1", "conv2", "conv_shortcut", "conv"]
PEFT_FOLDER = "peft"  # LoHa / LoKr: PEFT's own adapter layout per component, for reloading in process


def _config(cfg, targets, with_conv: bool = False):
    targets = list(targets)
    rank_pattern, alpha_pattern = {}, {}
    if with_conv and cfg.conv_rank:
        targets += CONV_TARGETS
        conv_alpha = 1.0 if cfg.conv_alpha is None else cfg.conv_alpha
        rank_pattern = {t: cfg.conv_rank for t in CONV_TARGETS}
        alpha_pattern = {t: conv_alpha for t in CONV_TARGETS}
    common = dict(r=cfg.rank, target_modules=targets, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
    if cfg.lora_type == "loha":
        return LoHaConfig(alpha=cfg.lora_alpha, rank_dropout=cfg.rank_dropout, module_dropout=cfg.module_dropout,
                          **common)
    if cfg.lora_type == "lokr":
        return LoKrConfig(alpha=cfg.lora_alpha, rank_dropout=cfg.rank_dropout, module_dropout=cfg.module_dropout,
                          **common)
    return LoraConfig(lora_alpha=cfg.lora_alpha, init_lora_weights="gaussian", lora_dropout=cfg.lora_dropout,
                      use_dora=cfg.use_dora, **common)


def prepare(comps, cfg) -> list[dict]:
    """Freeze the base, add LoRA layers, and return optimizer param groups (fp32 trainable params)."""
    comps.unet.requires_grad_(False)
    comps.vae.requires_grad_(False)
    for te in comps.text_encoders:
        te.requires_grad_(False)
    try:
        comps.unet.add_adapter(_config(cfg, denoiser_targets(cfg, comps.family), with_conv=True))
    except ValueError as e:  # PEFT: "Target modules {...} not found in the base model"
        raise ValueError(f"lora_target_modules = {cfg.lora_target_modules}: {e}") from None
    groups = [{"params": trainable_params(comps.unet), "lr": cfg.learning_rate, "name": "unet"}]
    if cfg.train_text_encoder:
        te_lr = cfg.text_encoder_lr if cfg.text_encoder_lr is not None else cfg.learning_rate
        for name, te in lora_text_encoders(comps).items():
            te.add_adapter(_config(cfg, TEXT_ENCODER_TARGETS))
            groups.append({"params": trainable_params(te), "lr": te_lr, "name": name})
    return groups


def lora_text_encoders(comps) -> dict[str, torch.nn.Module]:
    """The text encoders a LoRA trains with train_text_encoder: the CLIPs (the DiTs' T5 stays frozen, as in
    sd-scripts and diffusers' scripts)."""
    fam = comps.family
    return {n: te for n, te in zip(fam.text_encoder_names, comps.text_encoders) if n in fam.kohya_te_prefixes}


def denoiser_targets(cfg, family) -> list[str]:
    """lora_target_modules; left at the UNet default, a DiT family's own default (diffusers' script's)."""
    from engine.schema import FIELD_DEFAULTS

    own = getattr(family, "lora_default_targets", ())
    if own and list(cfg.lora_target_modules) == list(FIELD_DEFAULTS["lora_target_modules"]):
        return list(own)
    return list(cfg.lora_target_modules)


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
        out.update(lora_text_encoders(comps))
    return out


def state_dicts(modules: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(m, save_embedding_layers=False).items()}
            for name, m in modules.items()}


def adapter_metadata(module: torch.nn.Module) -> dict:
    """The LoraConfig as diffusers stores it beside the weights, so alpha (the scale) survives a reload.

    Dropouts are training-only: loaders build layers in training mode, so a stored dropout would make
    inference random."""
    config = module.peft_config["default"].to_dict()
    for key in ("lora_dropout", "rank_dropout", "module_dropout"):
        if key in config:
            config[key] = 0.0
    return config


def module_alphas(module: torch.nn.Module) -> dict[str, tuple[float, int]]:
    """{module path: (alpha, rank)} of every adapted layer (rank_pattern / alpha_pattern make them differ)."""
    return {name: (float(layer.scaling["default"] * layer.r["default"]), int(layer.r["default"]))
            for name, layer in module.named_modules()
            if isinstance(getattr(layer, "r", None), dict) and "default" in layer.r
            and isinstance(getattr(layer, "scaling", None), dict)}


def load_state(modules: dict[str, torch.nn.Module], state: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, module in modules.items():
        result = set_peft_model_state_dict(module, state[name])
        missing = [k for k in getattr(result, "unexpected_keys", []) or [] if "lora" in k]
        if missing:
            raise ValueError(f"checkpoint LoRA weights do not fit {name}: {missing[:3]}")


def output_path(run_dir: Path, cfg) -> Path:
    return run_dir / f"{cfg.adaptor_name}.safetensors"


def write_outputs(folder: Path, cfg, comps, modules: dict, stats: dict) -> dict[str, str]:
    """The kohya / LyCORIS file (ComfyUI, AUTOMATIC1111) and, for LoRA and DoRA, the diffusers folder
    (load_lora_weights); LoHa and LoKr, which diffusers cannot load, get PEFT's adapter folders instead."""
    sds = state_dicts(modules)
    alphas = {n: module_alphas(m) for n, m in modules.items()}
    meta = export.kohya_metadata(cfg, comps, stats)
    meta.update(_network_metadata(cfg))
    kohya = export.write_kohya_lora(Path(folder) / f"{cfg.adaptor_name}.safetensors", comps.family, sds,
                                    alphas, meta)
    out = {"kohya": str(kohya)}
    if cfg.lora_type == "lora":
        meta = {n: adapter_metadata(m) for n, m in modules.items()}
        out["diffusers"] = str(export.write_diffusers_lora(Path(folder) / "diffusers", comps.family, sds, meta))
    else:
        out["peft"] = str(_write_peft_folders(Path(folder) / PEFT_FOLDER, modules, sds, comps.family))
    return out


def _network_metadata(cfg) -> dict[str, str]:
    """ss_network_module / ss_network_args as kohya (networks.lora) or LyCORIS (lycoris.kohya) write them."""
    args = {"target_modules": cfg.lora_target_modules}
    if cfg.conv_rank:
        args.update(conv_dim=cfg.conv_rank, conv_alpha=1.0 if cfg.conv_alpha is None else cfg.conv_alpha)
    if cfg.lora_type == "lora" and not cfg.use_dora:
        return {"ss_network_args": json.dumps(args)}
    args["algo"] = cfg.lora_type
    if cfg.use_dora:
        args["dora_wd"] = True
    return {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps(args)}


def _write_peft_folders(root: Path, modules: dict, sds: dict, family) -> Path:
    """One folder per component, named as the pipeline calls it (`transformer` for a DiT: load_peft_folders)."""
    for name, module in modules.items():
        write_peft_folder(root / (family.denoiser_name if name == "unet" else name), adapter_metadata(module),
                          sds[name])
    return root


def write_peft_folder(folder: Path, config: dict, state: dict[str, torch.Tensor]) -> Path:
    """PEFT's adapter layout: adapter_model.safetensors + adapter_config.json (also engine/tools' writer)."""
    atomic.save_safetensors(state, folder / "adapter_model.safetensors")
    atomic.write_bytes(folder / "adapter_config.json",
                       json.dumps(config, default=lambda v: sorted(v) if isinstance(v, set) else str(v),
                                  indent=2).encode())
    return folder


def load_into_pipeline(pipe, run_dir: Path, cfg, scale: float = 1.0) -> None:
    """Apply a finished run's adaptor to a diffusers pipeline of its base model, at `scale`.

    LoRA and DoRA through diffusers' own `load_lora_weights` (plus the text-encoder DoRA magnitudes it drops,
    engine/lora_load.py); LoHa and LoKr by rebuilding the PEFT layers from the run's `peft/` folders (diffusers
    has no loader for them)."""
    run_dir = Path(run_dir)
    adapter = re.sub(r"\W", "_", cfg.adaptor_name)
    if cfg.lora_type == "lora":
        load_lora(pipe, run_dir / "diffusers", adapter)
        if scale != 1.0:
            pipe.set_adapters([adapter], adapter_weights=[scale])
        return
    load_peft_folders(pipe, run_dir / PEFT_FOLDER, adapter, scale, f"is {run_dir} a finished {cfg.lora_type} run?")


def load_peft_folders(pipe, root: Path, adapter: str, scale: float = 1.0, hint: str = "") -> None:
    """PEFT adapter folders (`root/<component>/adapter_config.json` + `adapter_model.safetensors`, any kind:
    LoRA, LoHa, LoKr) into the pipeline's components as adapter `adapter` at `scale` (also engine/tools')."""
    root = Path(root)
    folders = sorted(p for p in root.iterdir() if (p / "adapter_config.json").is_file()) if root.is_dir() else []
    if not folders:
        raise FileNotFoundError(f"{root} holds no PEFT adapter folders" + (f": {hint}" if hint else ""))
    for folder in folders:
        module = getattr(pipe, folder.name, None)
        if module is None:
            raise ValueError(f"{folder}: the pipeline has no component {folder.name!r}")
        config = PeftConfig.from_peft_type(**json.loads((folder / "adapter_config.json").read_text()))
        inject_adapter_in_model(config, module, adapter_name=adapter)
        result = set_peft_model_state_dict(module, load_file(str(folder / "adapter_model.safetensors")),
                                           adapter_name=adapter)
        missing = [k for k in getattr(result, "unexpected_keys", []) or [] if adapter in k or "hada" in k
                   or "lokr" in k]
        if missing:
            raise ValueError(f"{folder}: weights that fit no layer: {missing[:3]}")
        for layer in module.modules():
            if hasattr(layer, "set_scale") and isinstance(getattr(layer, "r", None), dict):
                layer.set_scale(adapter, scale)
        module.to(dtype=pipe.dtype)
        module.eval()


model_card = export.model_card
