"""quantize_base and the memory options' checks: the DiT families' frozen transformer held quantized (QLoRA), the
LoRA trained in full precision on top, and the rules blocks_to_swap adds.

The transformer loads through diffusers' own quantization configs, as diffusers' Flux QLoRA example
(examples/research_projects/flux_lora_quantization) and train_dreambooth_lora_flux2.py do:
`from_pretrained(..., quantization_config=BitsAndBytesConfig(...) | TorchAoConfig(...))`, then, for bitsandbytes,
peft's prepare_model_for_kbit_training (the non-quantized layers to fp32). PEFT puts its bnb / torchao LoRA
layers on the quantized Linears; only those LoRA weights are saved, so the files are the same as without.
Every option here needs CUDA: each is refused before anything loads, by name, saying what it needs.
"""
from __future__ import annotations

import importlib.util

import torch

from engine.config import ConfigError

BNB = ("nf4", "int8")
FP8_CAPABILITY = (8, 9)  # Ada, Hopper, Blackwell: the GPUs with fp8


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def machine_problems(cfg) -> list[tuple[str, str]]:
    """(key, message) for what this machine lacks, or what cannot go together; the family is not needed."""
    out = []
    kind, cuda = cfg.quantize_base, torch.cuda.is_available()
    if kind in BNB and not (cuda and _has("bitsandbytes")):
        out.append(("quantize_base", f'quantize_base = "{kind}" needs a CUDA GPU and bitsandbytes (pip install '
                                     "bitsandbytes)"))
    if kind == "fp8" and not (cuda and _has("torchao") and torch.cuda.get_device_capability() >= FP8_CAPABILITY):
        out.append(("quantize_base", 'quantize_base = "fp8" needs a CUDA GPU with fp8 (compute capability 8.9 or '
                                     'newer: Ada, Hopper, Blackwell) and torchao (pip install torchao); use "nf4" or '
                                     '"int8" otherwise'))
    if cfg.blocks_to_swap and kind in ("int8", "fp8"):
        out.append(("blocks_to_swap", f'blocks_to_swap cannot be used with quantize_base = "{kind}": its layers keep '
                                      "their weights outside the parameters the swap moves; use quantize_base = "
                                      '"nf4" (or "none") with blocks_to_swap'))
    if cfg.blocks_to_swap and cfg.torch_compile:
        out.append(("blocks_to_swap", "blocks_to_swap cannot be used with torch_compile (the swap moves weights "
                                      "from hooks between the blocks); turn one of them off"))
    return out


def family_problems(cfg, family) -> list[tuple[str, str]]:
    """The memory options are for the DiT families' transformer."""
    if family.objective == "flow":
        return []
    set_ = [f'quantize_base = "{cfg.quantize_base}"'] if cfg.quantize_base != "none" else []
    set_ += [f"blocks_to_swap = {cfg.blocks_to_swap}"] if cfg.blocks_to_swap else []
    return [(s.split(" ")[0], f"{s} applies to the DiT families' transformer (Flux.1, SD3/SD3.5), not to "
                              f"{family.label}'s UNet: leave it unset") for s in set_]


def check(cfg, family=None) -> None:
    """ConfigError for the first problem (the loop's check, before the model loads)."""
    problems = machine_problems(cfg) + (family_problems(cfg, family) if family is not None else [])
    if problems:
        raise ConfigError(problems[0][1])


def quantization_config(kind: str, dtype: torch.dtype):
    """diffusers' config for `kind`, computing in the training dtype."""
    if kind == "nf4":
        from diffusers import BitsAndBytesConfig
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    if kind == "int8":
        from diffusers import BitsAndBytesConfig
        return BitsAndBytesConfig(load_in_8bit=True)
    if kind == "fp8":
        from diffusers import TorchAoConfig
        from torchao.quantization import Float8WeightOnlyConfig
        # weight-only: fp8 storage (half of bf16), bf16 compute; the output projection stays in full precision,
        # as diffusers' fp8 training filter leaves it
        return TorchAoConfig(Float8WeightOnlyConfig(), modules_to_not_convert=["proj_out"])
    return None


def load_transformer(cls, source, cfg, dtype: torch.dtype, subfolder: str = "transformer"):
    """The family's transformer, quantized as quantize_base says."""
    from engine.builtin.random_dit import is_random, random_model
    from engine.families.base import load_pretrained

    kind = getattr(cfg, "quantize_base", "none")
    config = quantization_config(kind, dtype)
    if getattr(cfg, "pretrained_transformer_model_name_or_path", None):
        model = _own_transformer(cls, source, cfg, dtype, subfolder, config)
    elif is_random(source.location):
        model = random_model(cls, source.location, subfolder, dtype, config)
    else:
        model = load_pretrained(cls, source, cfg, subfolder, dtype,
                                **({"quantization_config": config} if config is not None else {}))
    if kind in BNB:
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def _own_transformer(cls, source, cfg, dtype, subfolder, config):
    """pretrained_transformer_model_name_or_path: a single file read by diffusers' from_single_file (BFL, SAI and
    ComfyUI names), shaped by the base model's transformer config; or a diffusers transformer folder."""
    from pathlib import Path

    from engine.builtin.random_dit import is_random
    from engine.families.base import ModelError, safetensors_keys

    key = "pretrained_transformer_model_name_or_path"
    given = cfg.pretrained_transformer_model_name_or_path
    p = Path(given).expanduser()
    if is_random(source.location):
        raise ModelError(f"{key} = {given!r}: {source.name} is built with random weights on the GPU; give a "
                         "diffusers folder or hub id as pretrained_model_name_or_path")
    extra = {"quantization_config": config} if config is not None else {}
    try:
        if p.is_file():
            if p.suffix.lower() not in (".safetensors", ".sft"):
                raise ModelError(f"{key} = {given!r}: a transformer file must be .safetensors")
            safetensors_keys(p, key)
            return cls.from_single_file(str(p), config=source.location, subfolder=subfolder, torch_dtype=dtype,
                                        **extra)
        if p.is_dir():
            sub = subfolder if (p / subfolder / "config.json").is_file() else None
            return cls.from_pretrained(str(p), subfolder=sub, torch_dtype=dtype, **extra)
    except ModelError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # diffusers' words: wrong family, bad shapes
        raise ModelError(f"{key} = {given!r}: could not load it as {source.name}'s {cls.__name__} "
                         f"({(str(e).strip().splitlines() or [type(e).__name__])[0][:300]}); is it a "
                         "checkpoint of the same model?") from None
    raise ModelError(f"{key} = {given!r}: no such file or folder")
