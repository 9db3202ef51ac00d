"""Qwen-Image LoRA: PEFT state dicts of diffusers' QwenImageTransformer2DModel -> the single file.

Layout: kohya's, as musubi-tuner (kohya's Qwen-Image trainer) writes it: `lora_unet_<diffusers path with _>` +
`.lora_down.weight` / `.lora_up.weight` / `.alpha` (float32 scalar). No fusing: ComfyUI's Qwen-Image model
(comfy/ldm/qwen_image/model.py) keeps diffusers' module names, separate q/k/v included. Both loaders read it:
- ComfyUI (comfy/lora.py model_lora_keys_unet): the generic rule maps `lora_unet_<weight key with _>` onto
  `diffusion_model.<weight key>` for every model; its Qwen-Image branch adds `<path>`, `transformer.<path>` and
  `lycoris_<path with _>`. Scale alpha / rank.
- diffusers (QwenImageLoraLoaderMixin.lora_state_dict): a file with `lora_unet_` keys goes through
  _convert_non_diffusers_qwen_lora_to_diffusers, which puts the dots back (it knows the underscored names:
  to_q, add_q_proj, to_add_out, img_mlp, txt_mod, ... and the top-level modules) and folds alpha / rank in.
Why not diffusers' own `transformer.<path>.lora_A/B` + alpha: the converter would prepend a second
`transformer.`; without alpha (scale folded, as keys_sd3 does) both loaders read it too, but kohya tools lose the
rank / alpha. Do not add diffusers' `lora_adapter_metadata` to this file: diffusers would scale twice.

Every Linear of the model maps (the blocks' attention, MLPs and modulation, img_in, txt_in, the timestep
embedder, norm_out.linear, proj_out); anything else raises. LoRA only here: LoHa / LoKr / DoRA are written in
LyCORIS' layout (keys/lycoris.py), checked by check_module.
"""
from __future__ import annotations

import re

import torch

from .lora import check_mappable, unfused_single_file

# diffusers' train_dreambooth_lora_qwen_image.py default (`--lora_layers` unset): the image stream's attention
# (PEFT matches by suffix: `to_q` is every block's attn.to_q, not add_q_proj).
DEFAULT_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]

# The Linear modules of QwenImageTransformer2DModel, which ComfyUI's model names alike.
_MAPPABLE = re.compile(
    r"transformer_blocks\.\d+\.(attn\.(to_[qkv]|to_out\.0|add_[qkv]_proj|to_add_out)|(img|txt)_mod\.1"
    r"|(img|txt)_mlp\.net\.(0\.proj|2))"
    r"|img_in|txt_in|time_text_embed\.timestep_embedder\.linear_[12]|norm_out\.linear|proj_out")


def to_single_file(state_dict: dict[str, torch.Tensor], alphas: dict[str, tuple[float, int]]
                   ) -> dict[str, torch.Tensor]:
    """PEFT keys without the `transformer.` prefix and {module path: (alpha, rank)} -> the file's tensors
    (kohya's `lora_unet_<path with _>`). Works on meta tensors (shapes only)."""
    return unfused_single_file(state_dict, alphas, _MAPPABLE, "Qwen-Image", lambda p: "lora_unet_" + p.replace(".", "_"),
                               ("lora_down.weight", "lora_up.weight"))


def check_module(path: str) -> None:
    check_mappable(_MAPPABLE, path, "Qwen-Image")
