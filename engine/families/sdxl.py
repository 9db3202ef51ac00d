"""Stable Diffusion XL: two text encoders (penultimate states concatenated, pooled from the second)
and micro-conditioning time ids (original size, crop top-left, target size)."""
from __future__ import annotations

import torch

from .base import Family, tokenize
from .sd import _load_parts


class SDXLFamily(Family):
    name = "sdxl"
    label = "Stable Diffusion XL"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    kohya_te_prefixes = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
    default_resolution = 1024

    @property
    def pipeline_class(self):
        from diffusers import StableDiffusionXLPipeline
        return StableDiffusionXLPipeline

    def text_encoder_classes(self):
        from transformers import CLIPTextModel, CLIPTextModelWithProjection
        return [CLIPTextModel, CLIPTextModelWithProjection]

    def load(self, source, cfg, weight_dtype):
        # SDXL's own VAE overflows to NaN in fp16 (not in bf16): keep it fp32 there unless a fixed VAE is given.
        fp16_unsafe = weight_dtype == torch.float16 and not cfg.pretrained_vae_model_name_or_path
        vae_dtype = torch.float32 if fp16_unsafe else weight_dtype
        return _load_parts(self, source, cfg, weight_dtype, vae_dtype=vae_dtype)

    def encode_prompt(self, tokenizers, text_encoders, captions, device, clip_skip=1):
        # clip_skip > 1 is refused for SDXL (engine.config / the loop): it already takes the penultimate layer
        states, pooled = [], None
        for tok, enc in zip(tokenizers, text_encoders):
            out = enc(tokenize(tok, captions).to(device), output_hidden_states=True, return_dict=True)
            states.append(out.hidden_states[-2])
            if hasattr(out, "text_embeds"):
                pooled = out.text_embeds
        return torch.cat(states, dim=-1), pooled

    def added_cond(self, comps, batch, pooled, device, dtype):
        time_ids = torch.cat([batch["original_sizes"], batch["crop_top_lefts"], batch["target_sizes"]], dim=1)
        return {"text_embeds": pooled.to(device, dtype), "time_ids": time_ids.to(device, dtype)}

    def base_model_version(self, comps):
        return "sdxl_base_v1-0"

    def modelspec_architecture(self, comps, kind="lora"):
        return f"stable-diffusion-xl-v1-base/{kind}"
