"""A fully trained DiT transformer as the single file ComfyUI (models/diffusion_models), Forge and diffusers'
`<Transformer>.from_single_file` load: its weights under the original (BFL / SAI) names.

Flux.1: BFL's names (keys/flux1.bfl_module for every Linear), q/k/v (and single blocks' proj_mlp) fused in
BFL's row order, the q/k RMSNorm scales under `.norm.query_norm.scale` / `.key_norm.scale`, and the final
modulation's halves swapped back to (shift, scale). SD3 has no fused-module writer yet: its file keeps
diffusers' names (ComfyUI's loader converts diffusers MMDiT state dicts itself). Qwen-Image's release names are
diffusers' own (ComfyUI's comfy/ldm/qwen_image/model.py keeps them; from_single_file maps them as they are).

Z-Image: the names of Comfy-Org's z_image_turbo_bf16.safetensors, ComfyUI's Lumina2 NextDiT
(comfy/ldm/lumina/model.py): each attention's to_q/k/v fused into `attention.qkv` (rows q, k, v), to_out.0 ->
`attention.out`, norm_q/norm_k -> `q_norm`/`k_norm`, the patch-2 embedder and final layer without their
`all_..2-1` wrapper; the rest (feed_forward, adaLN_modulation, norms, t_embedder, cap_embedder, the pad
tokens) as diffusers names it. The exact inverse of diffusers' convert_z_image_transformer_checkpoint_to_diffusers.
ComfyUI's model_detection reads `cap_embedder.1.weight` + `noise_refiner.0.attention.k_norm.weight` as Lumina2,
its width 3840 as Z-Image, and `cap_pad_token` as Z-Image rather than Ming-Image: all of them are written.
"""
from __future__ import annotations

import re

import torch

from .flux1 import bfl_module

# RMSNorm scales, which are not Linear layers (bfl_module maps those): diffusers -> BFL, per block kind
_FLUX_NORMS = {"transformer_blocks": {"attn.norm_q": "img_attn.norm.query_norm", "attn.norm_k": "img_attn.norm.key_norm",
                                      "attn.norm_added_q": "txt_attn.norm.query_norm",
                                      "attn.norm_added_k": "txt_attn.norm.key_norm"},
               "single_transformer_blocks": {"attn.norm_q": "norm.query_norm", "attn.norm_k": "norm.key_norm"}}
_BLOCK = re.compile(r"(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)")


def flux1_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """FluxTransformer2DModel state dict -> BFL-named tensors (no prefix, as Flux.1's own release)."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        m = _BLOCK.fullmatch(module)
        norms = _FLUX_NORMS[m.group(1)] if m else {}
        if m and m.group(3) in norms and param == "weight":
            block = "double_blocks" if m.group(1) == "transformer_blocks" else "single_blocks"
            out[f"{block}.{m.group(2)}.{norms[m.group(3)]}.scale"] = value
            continue
        bfl, part = bfl_module(module)  # ValueError naming the module for anything unmapped
        if module == "norm_out.linear":  # diffusers (scale, shift) -> BFL (shift, scale)
            value = torch.cat(value.chunk(2)[::-1])
        if part is None:
            out[f"{bfl}.{param}"] = value
        else:
            fused.setdefault(f"{bfl}.{param}", {})[part] = value
    for key, parts in fused.items():
        out[key] = torch.cat([parts[i] for i in sorted(parts)])
    return {k: v.contiguous() for k, v in out.items()}


_ZIMAGE_RENAMES = ((".attention.to_out.0.", ".attention.out."), (".attention.norm_q.", ".attention.q_norm."),
                   (".attention.norm_k.", ".attention.k_norm."))
_ZIMAGE_QKV = re.compile(r"(.+\.attention)\.to_([qkv])\.weight")


def zimage_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ZImageTransformer2DModel state dict -> ComfyUI's Z-Image names (no prefix, as Comfy-Org's file)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if m := _ZIMAGE_QKV.fullmatch(key):
            qkv.setdefault(f"{m.group(1)}.qkv.weight", {})[m.group(2)] = value
            continue
        if key.startswith(("all_x_embedder.", "all_final_layer.")):
            wrapper, _, rest = key.partition(".")
            size, _, rest = rest.partition(".")
            if size != "2-1":  # ComfyUI's NextDiT has one patch embedder and one final layer: patch 2, one frame
                raise ValueError(f"{key}: Z-Image's single file holds the patch-2 embedder only (ComfyUI's "
                                 "NextDiT); this model has another patch size")
            key = f"{wrapper.removeprefix('all_')}.{rest}"
        for old, new in _ZIMAGE_RENAMES:
            key = key.replace(old, new)
        out[key] = value
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return {k: v.contiguous() for k, v in out.items()}
