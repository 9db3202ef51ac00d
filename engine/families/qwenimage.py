"""Qwen-Image: a 20B MMDiT on 2x2-packed latents, conditioned on the last hidden state of a Qwen2.5-VL LLM (text
only), with the AutoencoderKLQwenImage video VAE (a frame axis, per-channel latents_mean / latents_std).

Training follows diffusers' train_dreambooth_lora_qwen_image.py, and every input is what QwenImagePipeline samples
with: the prompt template and its 34 dropped tokens (the pipeline's own encode_prompt computes the embeddings),
latents (z - mean) / std on one frame, x_t = (1 - s) x0 + s noise, the transformer sees t = s (the pipeline's
timestep / 1000) with img_shapes (1, h/2, w/2), the target is noise - x0.

The text embeddings vary in length per prompt. encode_prompt pads them to max_sequence_length and returns the
mask where other families return a pooled embedding (Qwen-Image has none), so the text-encoder cache stacks them;
predict trims the batch back to its longest prompt and passes the mask only when some prompt is shorter, as the
pipeline does. Masked text tokens change nothing: the transformer masks them out of attention.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import ModelError
from .dit import FlowFamily
from .keys import qwenimage as keys_qwenimage

PIPELINE_MAX_SEQUENCE_LENGTH = 1024  # QwenImagePipeline refuses a longer max_sequence_length


class QwenImageFamily(FlowFamily):
    name = "qwenimage"
    label = "Qwen-Image"
    text_encoder_names = ("text_encoder",)
    kohya_te_prefixes: dict[str, str] = {}  # a 7B LLM: LoRA trains the transformer only (diffusers, musubi-tuner)
    transformer_class = "QwenImageTransformer2DModel"
    vae_class = "AutoencoderKLQwenImage"
    pipeline_prefix = "QwenImage"  # QwenImagePipeline, QwenImageImg2ImgPipeline, QwenImageInpaintPipeline
    default_weighting = "none"  # diffusers' qwen script default: uniform timesteps
    default_max_sequence_length = 512  # the script's default
    t5_name = "text_encoder"  # the sequence encoder: its tokenizer carries max_sequence_length
    lora_default_targets = tuple(keys_qwenimage.DEFAULT_TARGETS)  # diffusers' train_dreambooth_lora_qwen_image.py
    lora_keys = keys_qwenimage  # the single file's key map (LoHa / LoKr / DoRA: keys/lycoris.py)

    @property
    def pipeline_class(self):
        from diffusers import QwenImagePipeline
        return QwenImagePipeline

    def text_encoder_classes(self):
        from transformers import Qwen2_5_VLForConditionalGeneration
        return [Qwen2_5_VLForConditionalGeneration]

    def tokenizer_class(self, name):
        from transformers import Qwen2Tokenizer
        return Qwen2Tokenizer

    def load(self, source, cfg, weight_dtype):
        wanted = getattr(cfg, "max_sequence_length", None)
        if wanted and wanted > PIPELINE_MAX_SEQUENCE_LENGTH:
            raise ModelError(f"max_sequence_length = {wanted}: QwenImagePipeline takes at most "
                             f"{PIPELINE_MAX_SEQUENCE_LENGTH} text tokens; set max_sequence_length to 1024 or less")
        return super().load(source, cfg, weight_dtype)

    # ---- latents: one frame of the video VAE, normalised per channel (the pipeline decodes z * std + mean)
    def encode_latents(self, comps, px, generator=None):
        dist = comps.vae.encode(px.unsqueeze(2)).latent_dist
        latents = (dist.mode() if generator is None else dist.sample(generator=generator)).squeeze(2)
        c = comps.vae.config
        mean = torch.tensor(c.latents_mean, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
        std = torch.tensor(c.latents_std, device=latents.device, dtype=latents.dtype).view(1, -1, 1, 1)
        return (latents - mean) / std

    # ---- text
    def encode_prompt(self, tokenizers, text_encoders, captions, device, clip_skip=1):
        """(hidden [B, L, D] zero-padded to L = max_sequence_length, mask [B, L]): QwenImagePipeline.encode_prompt's
        embeddings (template, dropped template tokens, the LLM's last hidden state), computed by that method."""
        from diffusers import QwenImagePipeline

        length = tokenizers[0].model_max_length
        encoder = QwenImagePipeline(scheduler=None, vae=None, text_encoder=text_encoders[0], tokenizer=tokenizers[0],
                                    transformer=None)
        hidden, mask = encoder.encode_prompt(list(captions), device=device, max_sequence_length=length)
        if mask is None:  # the pipeline drops an all-ones mask
            mask = torch.ones(hidden.shape[:2], device=hidden.device, dtype=torch.long)
        pad = length - hidden.shape[1]
        return F.pad(hidden, (0, 0, 0, pad)), F.pad(mask, (0, pad)).to(hidden.dtype)

    def predict(self, comps, model, noisy, sigmas, hidden, mask, cfg, dtype):
        from diffusers import QwenImagePipeline

        b, c, h, w = noisy.shape
        mask = mask.bool()
        longest = int(mask.sum(dim=1).max())  # the pipeline's masks are ones then zeros
        hidden, mask = hidden[:, :longest], mask[:, :longest]
        packed = QwenImagePipeline._pack_latents(noisy, b, c, h, w)
        out = model(hidden_states=packed, timestep=sigmas.to(dtype), encoder_hidden_states=hidden.to(dtype),
                    encoder_hidden_states_mask=None if bool(mask.all()) else mask,
                    img_shapes=[(1, h // 2, w // 2)] * b, return_dict=False)[0]
        # unpack: [B, (h/2)(w/2), 4c] -> [B, c, h, w]
        return out.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)

    def single_file_state_dict(self, state_dicts, alphas) -> dict:
        """The transformer in kohya's layout with diffusers' module names (keys_qwenimage); no text encoder."""
        return keys_qwenimage.to_single_file(state_dicts["unet"], alphas["unet"])

    def checkpoint_state_dict(self, transformer) -> dict:
        """A full fine-tune's single file: diffusers' names, which are the release's and ComfyUI's own (Comfy-Org's
        qwen_image_bf16; comfy/ldm/qwen_image/model.py), with no prefix."""
        return {k: v.contiguous() for k, v in transformer.state_dict().items()}

    def image_tokens(self, latent_h, latent_w) -> int:
        return (latent_h // 2) * (latent_w // 2)

    def base_model_version(self, comps):
        return "qwen_image"

    def modelspec_architecture(self, comps, kind="lora"):
        return f"Qwen-Image/{kind}"  # musubi-tuner's sai_model_spec id
