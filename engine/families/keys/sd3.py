"""SD3 / SD3.5 LoRA: PEFT state dicts of diffusers' SD3Transformer2DModel -> the single file.

Layout: diffusers' own names, `transformer.<module>.lora_A.weight` / `.lora_B.weight`, no `.alpha` keys,
the trained scale alpha / rank folded into lora_B. It is the only candidate both loaders read:
- diffusers' StableDiffusion3Pipeline.load_lora_weights converts nothing for SD3: it keeps the keys under
  `transformer.` and drops the rest. sd-scripts' SAI names (`lora_unet_joint_blocks_...`) and OneTrainer's
  `lora_transformer_...` load nothing there, silently.
- ComfyUI (comfy/lora.py model_lora_keys_unet, SD3 branch) maps `transformer.<diffusers path>` through
  comfy.utils.mmdit_to_diffusers onto its SAI weights, slicing q/k/v into the fused qkv and swapping the
  last block's norm1_context halves itself.
- Why no alpha: diffusers refuses a key without "lora" in it (`transformer.x.alpha`), and without alpha both
  loaders use scale 1 (diffusers: lora_alpha = rank; ComfyUI: alpha None -> 1). Do not add diffusers'
  `lora_adapter_metadata` with the trained lora_alpha to this file: diffusers would scale twice.

Every Linear of the model maps (joint blocks' attn / attn2 (SD3.5 Medium) / ff / ff_context / norm1(_context),
the embedders, norm_out.linear, proj_out), and pos_embed.proj (a Conv2d) too; anything else raises.

LoRA only here: LoHa / LoKr / DoRA are written in LyCORIS' layout (keys/lycoris.py), checked by check_module.
"""
from __future__ import annotations

import re

import torch

from .lora import check_mappable, lora_modules
from .lycoris import out_is_twice_in

# diffusers' train_dreambooth_lora_sd3.py default (`--lora_layers` unset): the joint attention. It does not
# match SD3.5 Medium's attn2 (`attn2.to_q` does not end in `.attn.to_q`).
DEFAULT_TARGETS = [
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v",
]

# The modules ComfyUI's mmdit_to_diffusers names (their weights) and diffusers' SD3 model has.
_MAPPABLE = re.compile(
    r"transformer_blocks\.\d+\.(attn\.(to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)|attn2\.(to_[qkv]|to_out\.0)"
    r"|ff(_context)?\.net\.(0\.proj|2)|norm1(_context)?\.linear)"
    r"|time_text_embed\.(timestep|text)_embedder\.linear_[12]|context_embedder|pos_embed\.proj|norm_out\.linear"
    r"|proj_out")


def to_single_file(state_dict: dict[str, torch.Tensor], alphas: dict[str, tuple[float, int]], check: bool = True
                   ) -> dict[str, torch.Tensor]:
    """PEFT keys without the `transformer.` prefix and {module path: (alpha, rank)} -> the file's tensors.
    Works on meta tensors (shapes only). check=False: a text encoder's modules (same folding, no SD3 map)."""
    out: dict[str, torch.Tensor] = {}
    for mod in lora_modules(state_dict, alphas):
        if check:
            check_module(mod.path)
        out[f"transformer.{mod.path}.lora_A.weight"] = mod.down.contiguous()
        out[f"transformer.{mod.path}.lora_B.weight"] = (mod.up * mod.scale).contiguous()
    return out


def check_module(path: str) -> None:
    check_mappable(_MAPPABLE, path, "SD3")


def comfy_swapped(path: str, parts: dict) -> bool:
    """ComfyUI swaps (scale, shift) of norm_out.linear and of the last block's norm1_context.linear
    (mmdit_to_diffusers)."""
    return path == "norm_out.linear" or (path.endswith(".norm1_context.linear") and out_is_twice_in(parts))
