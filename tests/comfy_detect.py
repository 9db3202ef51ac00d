"""ComfyUI's family detection for a diffusion-model file (models/diffusion_models), ported small for the two
families whose full fine-tune file is checked against it: which `image_model` would ComfyUI build from these keys?

Ported from Comfy-Org/ComfyUI (GPL-3.0), comfy/model_detection.py @ 0b61ce5baa9ea03d8484729b7eb00e77c6fca227:
detect_unet_config's Lumina2 branch (Z-Image when the width is 3840 and `cap_pad_token` is there, Ming-Image
without it) and the Qwen-Image branches (Lens, Mage-Flow and Qwen-Image 2.1 are tried first). The key prefix is
"": unet_prefix_from_state_dict answers "model." for a file whose keys start with none of
`model.diffusion_model.`, `model.model.`, `net.`, and no key of ours starts with it. Nothing else is ported.
"""
from __future__ import annotations


def image_model(sd: dict) -> str | None:
    """What ComfyUI would build from a state dict (of tensors, meta ones too): its dit_config["image_model"],
    except that a Lumina2 config of Z-Image's width with its pad tokens (z_image_modulation, rope 256, ...) is
    called "z_image" here; None when none of these branches matches."""
    if "cap_embedder.1.weight" in sd and "noise_refiner.0.attention.k_norm.weight" in sd:  # Lumina 2
        if sd["cap_embedder.1.weight"].shape[0] != 3840:
            return "lumina2"
        if "dec_net.cond_embed.weight" in sd:
            return "zimage_pixel"
        return "z_image" if "cap_pad_token" in sd else "ming_image"
    if "transformer_blocks.0.attn.norm_added_q.weight" in sd and "transformer_blocks.0.img_mlp.w1.weight" in sd:
        return "lens"
    if ("txt_norm.weight" in sd and "proj_out.weight" in sd and sd["txt_norm.weight"].shape[0] == 2560
            and sd["proj_out.weight"].shape[0] == 128):
        return "mage_flow"
    q21 = ["txt_in.text_norm.weight", "modulation.1.weight", "transformer_blocks.0.attn.norm_q.weight",
           "img_in.weight", "proj_out.weight"]
    if all(k in sd for k in q21) and any(f"transformer_blocks.0.img_mlp.{k}.weight" in sd for k in ("gate_up", "proj")):
        return "qwen_image21"
    if "txt_norm.weight" in sd:
        return "qwen_image"
    return None
