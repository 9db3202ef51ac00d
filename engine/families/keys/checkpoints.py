"""A fully trained DiT transformer as the single file ComfyUI (models/diffusion_models), Forge and diffusers'
`<Transformer>.from_single_file` load: its weights under the original (BFL / SAI) names.

Flux.1: BFL's names (keys/flux1.bfl_module for every Linear), q/k/v (and single blocks' proj_mlp) fused in
BFL's row order, the q/k RMSNorm scales under `.norm.query_norm.scale` / `.key_norm.scale`, and the final
modulation's halves swapped back to (shift, scale). SD3 has no fused-module writer yet: its file keeps
diffusers' names (ComfyUI's loader converts diffusers MMDiT state dicts itself).
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
