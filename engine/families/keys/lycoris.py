"""LoHa, LoKr and DoRA of a DiT family's transformer -> the single file ComfyUI loads (every DiT family alike).

Layout: LyCORIS' own, as SimpleTuner writes it through the LyCORIS library: `lycoris_<diffusers module path with _>`
+ LyCORIS' tensor names (`hada_w1_a` ..., `lokr_w1` / `lokr_w2_a` ..., DoRA: `lora_down.weight` / `lora_up.weight`
/ `dora_scale`) + `.alpha` (float32). ComfyUI (comfy/lora.py model_lora_keys_unet) maps `lycoris_<path>` in its
Flux (flux_to_diffusers), SD3 (mmdit_to_diffusers), Lumina2 = Z-Image (z_image_to_diffusers) and QwenImage
branches onto its own weights, q/k/v (and Flux's proj_mlp) as (offset) slices of the fused qkv / linear1.
comfy.lora.calculate_weight narrows the weight to that slice before the adapter's calculate_weight, so each
module's change lands on its own rows:
- LoHa / LoKr: a Hadamard or Kronecker product of one module does not concatenate with its neighbours' into one
  fused factor pair, which is why Flux's LoRA layout (q/k/v fused, keys/flux1.py) cannot hold them.
- DoRA: the magnitude is per output row (PEFT's, shaped [out, 1] as kohya's `dora_scale`), so it rescales exactly
  the rows it was trained for. ComfyUI applies its `function` (swap_scale_shift: Flux's and SD3's norm_out.linear,
  SD3's last norm1_context.linear) to the weight change only, while the magnitude multiplies the rows of its
  (shift, scale)-ordered weight: for those modules the magnitude's halves are written swapped.
Scales: LoHa alpha / rank as PEFT; LoKr and DoRA as export.kohya_module writes them for the UNet families.
diffusers reads none of this file (no LoHa / LoKr loader; it drops kohya `dora_scale`): its users take
`peft/transformer` (LoHa / LoKr) or `diffusers/` (DoRA) from the run folder.
"""
from __future__ import annotations

from typing import Callable

import torch

from engine.export import group_modules, kohya_module

PREFIX = "lycoris_"


def to_single_file(state_dict: dict[str, torch.Tensor], alphas: dict[str, tuple[float, int]],
                   check: Callable[[str], object], swapped: Callable[[str, dict], bool] = lambda path, parts: False
                   ) -> dict[str, torch.Tensor]:
    """PEFT keys of the transformer (any kind) and {module path: (alpha, rank)} -> the file's tensors.
    `check(path)` raises ValueError naming a module ComfyUI does not map; `swapped(path, parts)`: ComfyUI swaps
    this module's halves (scale, shift). Works on meta tensors (shapes only)."""
    out: dict[str, torch.Tensor] = {}
    for path, parts in group_modules(state_dict).items():
        check(path)
        if path not in alphas:
            raise ValueError(f"{path}: no (alpha, rank) given for this module")
        alpha, rank = alphas[path]
        tensors = kohya_module(parts, alpha, rank)
        if "dora_scale" in tensors and swapped(path, parts):
            tensors["dora_scale"] = torch.cat(tensors["dora_scale"].chunk(2)[::-1])
        stem = PREFIX + path.replace(".", "_")
        out.update({f"{stem}.{name}": value for name, value in tensors.items()})
    return out


def out_is_twice_in(parts: dict[str, torch.Tensor]) -> bool:
    """A (scale, shift) modulation Linear: out = 2 x in (SD3's last norm1_context.linear; the others are 6 x in)."""
    return parts["lora_B.weight"].shape[0] == 2 * parts["lora_A.weight"].shape[1]
