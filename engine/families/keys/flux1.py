"""Flux.1 LoRA: PEFT state dicts of diffusers' FluxTransformer2DModel -> the kohya/BFL single file.

The file is the layout sd-scripts' flux_train_network.py writes: `lora_unet_<BFL module with _>` +
`.lora_down.weight` / `.lora_up.weight` / `.alpha` (float32 scalar). ComfyUI maps `lora_unet_<key>` onto its
BFL-named model weights directly; diffusers' FluxPipeline.lora_state_dict converts it back
(`_convert_kohya_flux_lora_to_diffusers`).

BFL fuses what diffusers keeps apart: double blocks' img_attn.qkv = [to_q, to_k, to_v] and txt_attn.qkv =
[add_q_proj, add_k_proj, add_v_proj]; single blocks' linear1 = [to_q, to_k, to_v, proj_mlp]. Their LoRAs are
fused exactly: every part gets a block of `width` (the largest rank among them) rows in down and columns in
up, block-diagonal, zero for a part that was not trained. That is sd-scripts' own split_qkv layout, the
one diffusers' converter recognises as "sparse" and splits back into one LoRA per part. alpha is written so
that alpha / rank (both loaders take rank = down.shape[0]) is the trained scale; parts trained with other
scales have the ratio folded into their up block.

What diffusers 0.42.1's converter does with the file (ComfyUI loads all of it):
- single blocks' linear1 is split with Flux.1's sizes hard-coded (3072, 3072, 3072, 12288): only full-size
  Flux.1 linear1 LoRAs load there; ComfyUI reads the sizes from the model.
- the top-level modules (img_in, txt_in, time_in, vector_in, guidance_in, final_layer) come out without the
  `transformer.` prefix and are silently not loaded: for those, diffusers users need the diffusers file.
- final_layer's alpha is ignored, so for proj_out / norm_out.linear the scale is folded into up and
  alpha = rank is written (scale 1 in every loader, should diffusers start loading them).
- norm_out.linear is (scale, shift) in diffusers and (shift, scale) in BFL: the halves of up are swapped.
Do not add diffusers' `lora_adapter_metadata` to this file: diffusers applies alpha / rank while converting
and would scale again by the metadata's lora_alpha.

LoRA only here: LoHa / LoKr / DoRA cannot be fused so; they are written in LyCORIS' layout (keys/lycoris.py).
"""
from __future__ import annotations

import re

import torch

from .lora import LoraModule, alpha_tensor, lora_modules

# diffusers' train_dreambooth_lora_flux.py default (`--lora_layers` unset): attention and MLPs of the double
# blocks; in single blocks this matches only attn.to_q/k/v (part of linear1).
DEFAULT_TARGETS = [
    "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
]
# sd-scripts' networks/lora_flux.py default: every Linear of DoubleStreamBlock and SingleStreamBlock
# (modulation included), in diffusers names. A regex (PEFT full-matches a string) because the single
# blocks' proj_out cannot be listed by suffix without also catching the final layer's proj_out.
SD_SCRIPTS_TARGETS = (r"(single_)?transformer_blocks\.\d+\.(attn\.(to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)"
                      r"|ff(_context)?\.net\.(0\.proj|2)|norm1(_context)?\.linear|norm\.linear|proj_mlp|proj_out)")

MLP_RATIO = 4  # Flux.1: proj_mlp / img_mlp width = 4 x hidden; sizes an untrained proj_mlp part of linear1

_DOUBLE = {"attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
           "ff.net.0.proj": "img_mlp.0", "ff.net.2": "img_mlp.2",
           "ff_context.net.0.proj": "txt_mlp.0", "ff_context.net.2": "txt_mlp.2",
           "norm1.linear": "img_mod.lin", "norm1_context.linear": "txt_mod.lin"}
_SINGLE = {"proj_out": "linear2", "norm.linear": "modulation.lin"}
_TOP = {"x_embedder": "img_in", "context_embedder": "txt_in",
        "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
        "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
        "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
        "proj_out": "final_layer.linear", "norm_out.linear": "final_layer.adaLN_modulation.1"}
_FINAL = {"proj_out", "norm_out.linear"}  # diffusers drops these files' alpha: fold the scale in
# fused BFL module -> its diffusers parts, in BFL's row order
_DOUBLE_FUSED = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
                 "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}
_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
_BLOCK = re.compile(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)")


def bfl_module(path: str) -> tuple[str, int | None]:
    """diffusers module path -> (BFL module, index of its part in a fused module, or None)."""
    m = _BLOCK.fullmatch(path)
    if m is None:
        if path in _TOP:
            return _TOP[path], None
        raise ValueError(f"{path}: no Flux.1 single-file (BFL) key for this module")
    kind, n, rest = m.groups()
    block, plain, fused = (("double_blocks", _DOUBLE, _DOUBLE_FUSED) if kind == "transformer_blocks"
                           else ("single_blocks", _SINGLE, _SINGLE_FUSED))
    if rest in plain:
        return f"{block}.{n}.{plain[rest]}", None
    for name, parts in fused.items():
        if rest in parts:
            return f"{block}.{n}.{name}", parts.index(rest)
    raise ValueError(f"{path}: no Flux.1 single-file (BFL) key for this module")


def _stem(bfl: str) -> str:
    return "lora_unet_" + bfl.replace(".", "_")


def _plain(mod: LoraModule, bfl: str) -> dict[str, torch.Tensor]:
    up, alpha = mod.up, mod.alpha
    if mod.path in _FINAL:
        up, alpha = up * mod.scale, float(mod.rank)
    if mod.path == "norm_out.linear":
        up = torch.cat(up.chunk(2)[::-1])  # diffusers (scale, shift) -> BFL (shift, scale)
    stem = _stem(bfl)
    return {f"{stem}.lora_down.weight": mod.down.contiguous(), f"{stem}.lora_up.weight": up.contiguous(),
            f"{stem}.alpha": alpha_tensor(alpha)}


def _fused(bfl: str, n_parts: int, parts: dict[int, LoraModule]) -> dict[str, torch.Tensor]:
    """One BFL weight's LoRA from its parts' LoRAs: down stacked, up block-diagonal, zeros where untrained."""
    first = parts[min(parts)]
    hidden = first.down.shape[1]
    if any(p.down.shape[1] != hidden for p in parts.values()):
        raise ValueError(f"{bfl}: the fused parts' LoRAs take different input sizes")
    sizes = [hidden] * 3 + [MLP_RATIO * hidden] * (n_parts - 3)
    for j, p in parts.items():
        sizes[j] = p.up.shape[0]
    width = max(p.rank for p in parts.values())
    ref = next((p.scale for _, p in sorted(parts.items()) if p.scale), 0.0)
    down = first.down.new_zeros(n_parts * width, hidden)
    up = first.up.new_zeros(sum(sizes), n_parts * width)
    for j, p in parts.items():
        row, col = sum(sizes[:j]), j * width
        factor = p.scale / ref if ref else 1.0  # 1 unless the parts were trained with different scales
        down[col:col + p.rank] = p.down
        up[row:row + sizes[j], col:col + p.rank] = p.up if factor == 1.0 else p.up * factor
    stem = _stem(bfl)
    return {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up,
            f"{stem}.alpha": alpha_tensor(ref * n_parts * width)}


def to_single_file(state_dict: dict[str, torch.Tensor], alphas: dict[str, tuple[float, int]]
                   ) -> dict[str, torch.Tensor]:
    """PEFT keys without the `transformer.` prefix (`transformer_blocks.0.attn.to_q.lora_A.weight`) and
    {module path: (alpha, rank)} -> the kohya/BFL Flux.1 file's tensors. Works on meta tensors (shapes only)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[int, LoraModule]] = {}
    for mod in lora_modules(state_dict, alphas):
        bfl, part = bfl_module(mod.path)
        if part is None:
            out.update(_plain(mod, bfl))
        else:
            fused.setdefault(bfl, {})[part] = mod
    for bfl, parts in fused.items():
        out.update(_fused(bfl, 4 if bfl.endswith(".linear1") else 3, parts))
    return out


def check_module(path: str) -> None:
    """ValueError naming a module ComfyUI's flux_to_diffusers does not map (the modules bfl_module knows)."""
    bfl_module(path)


def comfy_swapped(path: str, parts: dict) -> bool:
    """ComfyUI swaps norm_out.linear's (scale, shift) halves (flux_to_diffusers' swap_scale_shift)."""
    return path == "norm_out.linear"
