"""Z-Image LoRA: PEFT state dicts of diffusers' ZImageTransformer2DModel -> the single file.

Layout: `diffusion_model.<diffusers module>.lora_A.weight` / `.lora_B.weight` + `.alpha` (float32 scalar), the
trained alpha kept as is. Both loaders read it:
- ComfyUI (comfy/lora.py model_lora_keys_unet, Lumina2 branch, which Z-Image's model is) maps
  `diffusion_model.` / `transformer.` / bare diffusers names through comfy.utils.z_image_to_diffusers onto its own
  weights (to_q/k/v sliced into the fused attention.qkv, to_out.0 -> attention.out, all_x_embedder.2-1 ->
  x_embedder, ...), and scales by alpha / rank.
- diffusers' ZImagePipeline.lora_state_dict sends a file with `diffusion_model.` keys or `.alpha` keys through
  _convert_non_diffusers_z_image_lora_to_diffusers: the prefix becomes `transformer.`, alpha / rank is folded
  into lora_A / lora_B and the alpha keys are dropped.
This is also the prefix ai-toolkit's Z-Image LoRAs carry, so the file looks like what users already load. Do not
add diffusers' `lora_adapter_metadata`: diffusers folds alpha while converting and would scale twice.

Every Linear of the transformer maps (the blocks' attention / feed_forward / adaLN_modulation of layers,
noise_refiner and context_refiner; the embedders; the final layer): ComfyUI's map names them all. Anything else
(norms, a patch size other than 2-1, which ComfyUI does not map) raises.

LoRA only here: LoHa / LoKr / DoRA are written in LyCORIS' layout (keys/lycoris.py), checked by check_module.
"""
from __future__ import annotations

import re

import torch

from .lora import check_mappable, unfused_single_file

PREFIX = "diffusion_model."
# diffusers' train_dreambooth_lora_z_image.py default (`--lora_layers` unset): every attention's projections,
# in the main layers and both refiners
DEFAULT_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]

# The modules comfy.utils.z_image_to_diffusers names (their weights) and diffusers' Z-Image model has.
_MAPPABLE = re.compile(
    r"(layers|noise_refiner|context_refiner)\.\d+\.(attention\.(to_[qkv]|to_out\.0)|feed_forward\.w[123]"
    r"|adaLN_modulation\.0)"
    r"|all_final_layer\.2-1\.(linear|adaLN_modulation\.1)|all_x_embedder\.2-1|cap_embedder\.1|t_embedder\.mlp\.[02]")


def to_single_file(state_dict: dict[str, torch.Tensor], alphas: dict[str, tuple[float, int]]
                   ) -> dict[str, torch.Tensor]:
    """PEFT keys without the `transformer.` prefix and {module path: (alpha, rank)} -> the file's tensors
    (`diffusion_model.<path>.lora_A/B.weight`; ComfyUI maps the attention, feed_forward, adaLN_modulation and
    embedder Linears only). Works on meta tensors (shapes only)."""
    return unfused_single_file(state_dict, alphas, _MAPPABLE, "Z-Image", lambda p: PREFIX + p,
                               ("lora_A.weight", "lora_B.weight"))


def check_module(path: str) -> None:
    check_mappable(_MAPPABLE, path, "Z-Image")
