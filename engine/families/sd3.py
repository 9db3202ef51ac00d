"""Stable Diffusion 3 / 3.5 (Medium, Large): an MMDiT on unpacked latents with two CLIPs (penultimate states,
pooled outputs concatenated) and a T5, whose sequence is appended to the CLIPs' padded states.

Training follows diffusers' train_dreambooth_lora_sd3.py: x_t = (1 - s) x0 + s noise, the transformer sees
t = 1000 s, and the target is noise - x0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.export import canonical_keys

from .keys import sd3 as keys_sd3
from .base import tokenize
from .dit import FlowFamily


class SD3Family(FlowFamily):
    name = "sd3"
    label = "Stable Diffusion 3 / 3.5"
    text_encoder_names = ("text_encoder", "text_encoder_2", "text_encoder_3")
    kohya_te_prefixes = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}
    transformer_class = "SD3Transformer2DModel"
    pipeline_prefix = "StableDiffusion3"
    default_weighting = "logit_normal"  # diffusers' sd3 script default
    default_max_sequence_length = 256  # StableDiffusion3Pipeline's default
    t5_name = "text_encoder_3"
    lora_default_targets = tuple(keys_sd3.DEFAULT_TARGETS)  # diffusers' train_dreambooth_lora_sd3.py
    lora_keys = keys_sd3  # the single file's key map (LoHa / LoKr / DoRA: keys/lycoris.py)

    @property
    def pipeline_class(self):
        from diffusers import StableDiffusion3Pipeline
        return StableDiffusion3Pipeline

    def text_encoder_classes(self):
        from transformers import CLIPTextModelWithProjection, T5EncoderModel
        return [CLIPTextModelWithProjection, CLIPTextModelWithProjection, T5EncoderModel]

    def encode_prompt(self, tokenizers, text_encoders, captions, device, clip_skip=1):
        """(CLIP-L|CLIP-G states padded to T5's width, then T5's sequence; both pooled outputs), as
        StableDiffusion3Pipeline.encode_prompt computes them (clip_skip counted as kohya: 1 = its default)."""
        states, pooled = [], []
        for tok, enc in zip(tokenizers[:2], text_encoders[:2]):
            out = enc(tokenize(tok, captions).to(device), output_hidden_states=True)
            pooled.append(out[0])
            states.append(out.hidden_states[-(clip_skip + 1)])
        clip = torch.cat(states, dim=-1)
        t5 = self.t5_embeds(tokenizers[2], text_encoders[2], captions, device)
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat(pooled, dim=-1)

    def predict(self, comps, model, noisy, sigmas, hidden, pooled, cfg, dtype):
        return model(hidden_states=noisy, timestep=(sigmas * 1000).to(dtype), encoder_hidden_states=hidden.to(dtype),
                     pooled_projections=pooled.to(dtype), return_dict=False)[0]

    def single_file_state_dict(self, state_dicts, alphas) -> dict:
        """diffusers' names with each scale folded into lora_B (keys_sd3: the one layout both ComfyUI and
        StableDiffusion3Pipeline read), the CLIPs' as `text_encoder(_2).text_model...` likewise."""
        out = {}
        for component, sd in state_dicts.items():
            sd, a = canonical_keys(component, sd), canonical_keys(component, alphas[component])
            keys = keys_sd3.to_single_file(sd, a, check=component == "unet")
            prefix = "transformer." if component == "unet" else f"{component}."
            out.update({prefix + k.removeprefix("transformer."): v for k, v in keys.items()})
        return out

    def checkpoint_state_dict(self, transformer) -> dict:
        """A full fine-tune's single file: the transformer in diffusers' names (no SAI-layout writer yet; ComfyUI's
        diffusion-model loader converts diffusers MMDiT state dicts)."""
        return {k: v.contiguous() for k, v in transformer.state_dict().items()}

    def image_tokens(self, latent_h, latent_w) -> int:
        return (latent_h // 2) * (latent_w // 2)

    def base_model_version(self, comps):
        # sd-scripts' model_type (sd3_utils.load_mmdit): SD3.5 has qk-norm; its Medium adds MMDiT-X's
        # dual-attention layers; SD3 is Medium only
        config = comps.unet.config
        if not config.qk_norm:
            return "medium"
        return "5-medium" if config.get("dual_attention_layers") else "5-large"

    def modelspec_architecture(self, comps, kind="lora"):
        return f"stable-diffusion-3-{self.base_model_version(comps)}/{kind}"  # sd-scripts' sai_model_spec id
