"""Flux.1 (dev, schnell; Chroma-like derivatives load as their own pipelines): a rectified-flow MMDiT with CLIP
pooled + T5 sequence conditioning, 2x2-packed latents with position ids, and (dev) a guidance embedding.

Training follows diffusers' train_dreambooth_lora_flux.py: x_t = (1 - s) x0 + s noise, the transformer sees
t = s (the pipeline's timestep / 1000), the target is noise - x0; dev is trained at a fixed guidance value.
"""
from __future__ import annotations

import torch

from engine.export import canonical_keys, peft_to_kohya

from .keys import flux1 as keys_flux1
from .keys.checkpoints import flux1_checkpoint
from .base import tokenize
from .dit import FlowFamily


class Flux1Family(FlowFamily):
    name = "flux1"
    label = "Flux.1"
    text_encoder_names = ("text_encoder", "text_encoder_2")
    kohya_te_prefixes = {"text_encoder": "lora_te1"}  # the CLIP; sd-scripts trains no T5 LoRA for Flux
    transformer_class = "FluxTransformer2DModel"
    pipeline_prefix = "Flux"  # FluxPipeline, FluxImg2ImgPipeline, FluxInpaintPipeline
    default_weighting = "none"  # diffusers' flux script default: uniform timesteps
    default_max_sequence_length = 512
    t5_name = "text_encoder_2"
    lora_default_targets = tuple(keys_flux1.DEFAULT_TARGETS)  # diffusers' train_dreambooth_lora_flux.py
    lora_keys = keys_flux1  # the single file's key map (LoHa / LoKr / DoRA: keys/lycoris.py)

    @property
    def pipeline_class(self):
        from diffusers import FluxPipeline
        return FluxPipeline

    def text_encoder_classes(self):
        from transformers import CLIPTextModel, T5EncoderModel
        return [CLIPTextModel, T5EncoderModel]

    def encode_prompt(self, tokenizers, text_encoders, captions, device, clip_skip=1):
        """(T5 sequence [B, L, D], CLIP pooled [B, P]), as FluxPipeline.encode_prompt computes them."""
        pooled = text_encoders[0](tokenize(tokenizers[0], captions).to(device), output_hidden_states=False)
        return self.t5_embeds(tokenizers[1], text_encoders[1], captions, device), pooled.pooler_output

    def predict(self, comps, model, noisy, sigmas, hidden, pooled, cfg, dtype):
        from diffusers import FluxPipeline

        b, c, h, w = noisy.shape
        packed = FluxPipeline._pack_latents(noisy, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, dtype)
        txt_ids = torch.zeros(hidden.shape[1], 3, device=noisy.device, dtype=dtype)
        config = getattr(model, "module", model).config  # under DDP
        guidance = (torch.full((b,), float(cfg.flux_guidance_value), device=noisy.device, dtype=torch.float32)
                    if config.guidance_embeds else None)
        out = model(hidden_states=packed, timestep=sigmas.to(dtype), guidance=guidance,
                    pooled_projections=pooled.to(dtype), encoder_hidden_states=hidden.to(dtype), txt_ids=txt_ids,
                    img_ids=img_ids, return_dict=False)[0]
        # unpack: [B, (h/2)(w/2), 4c] -> [B, c, h, w]
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    def single_file_state_dict(self, state_dicts, alphas) -> dict:
        """The transformer in sd-scripts' kohya/BFL layout (keys_flux1), the CLIP as `lora_te1_` (sd-scripts)."""
        out = {}
        for component, sd in state_dicts.items():
            if component == "unet":
                out.update(keys_flux1.to_single_file(sd, alphas[component]))
            else:
                out.update(peft_to_kohya(canonical_keys(component, sd), self.kohya_te_prefixes[component],
                                         canonical_keys(component, alphas[component])))
        return out

    def checkpoint_state_dict(self, transformer) -> dict:
        """A full fine-tune's single file: BFL's names, as Flux.1's own release (keys/checkpoints.py)."""
        return flux1_checkpoint(transformer.state_dict())

    def image_tokens(self, latent_h, latent_w) -> int:
        return (latent_h // 2) * (latent_w // 2)

    def base_model_version(self, comps):
        return "flux1"

    def is_schnell(self, comps) -> bool:
        return not comps.unet.config.guidance_embeds

    def modelspec_architecture(self, comps, kind="lora"):
        # sd-scripts' sai_model_spec ids
        return f"flux-1-{'schnell' if self.is_schnell(comps) else 'dev'}/{kind}"
