"""Z-Image (Tongyi-MAI Z-Image-Turbo and base): a single-stream DiT conditioned on a Qwen3 LLM's penultimate hidden
states, with the Flux VAE and a flow-matching scheduler at a static shift.

Training follows diffusers' train_dreambooth_lora_z_image.py, which samples as ZImagePipeline does:
- the caption goes through the tokenizer's chat template (one user turn, generation prompt, enable_thinking=True),
  is padded to max_sequence_length, and the states of its unmasked tokens are the caption features;
- latents are (latent - shift_factor) * scaling_factor (the Flux VAE's), x_t = (1 - s) x0 + s noise;
- the transformer takes a list of [C, 1, H, W] latents, t = 1 - s (its clean-to-noise direction is reversed),
  and a list of per-caption features; its output is negated to give the flow prediction noise - x0.
Position ids and 2x2 patching happen inside the transformer.

The caption features differ in length per caption. encode_prompt returns them padded to max_sequence_length with
the attention mask in the `pooled` slot, so the text-encoder cache stacks fixed shapes; predict cuts each caption
back to its own tokens, so cached and uncached runs feed the transformer the same features.
"""
from __future__ import annotations

import torch

from .dit import FlowFamily
from .keys import zimage as keys_zimage
from .keys.checkpoints import zimage_checkpoint


class ZImageFamily(FlowFamily):
    name = "zimage"
    label = "Z-Image"
    text_encoder_names = ("text_encoder",)
    kohya_te_prefixes: dict[str, str] = {}  # an LLM encoder: no LoRA trains it (diffusers' script, ai-toolkit)
    transformer_class = "ZImageTransformer2DModel"
    pipeline_prefix = "ZImage"  # ZImagePipeline, ZImageImg2ImgPipeline, ZImageInpaintPipeline
    default_weighting = "none"  # the script's default: uniform timesteps
    default_max_sequence_length = 512  # ZImagePipeline's and the script's
    t5_name = "text_encoder"  # the sequence encoder, whose tokenizer holds the length training and sampling use
    lora_default_targets = tuple(keys_zimage.DEFAULT_TARGETS)
    lora_keys = keys_zimage  # the single file's key map (LoHa / LoKr / DoRA: keys/lycoris.py)

    @property
    def pipeline_class(self):
        from diffusers import ZImagePipeline
        return ZImagePipeline

    def text_encoder_classes(self):
        from transformers import Qwen3Model
        return [Qwen3Model]

    def tokenizer_class(self, name):
        from transformers import Qwen2Tokenizer
        return Qwen2Tokenizer

    def encode_prompt(self, tokenizers, text_encoders, captions, device, clip_skip=1):
        """(penultimate hidden states [B, L, D] at the padded length L, attention mask [B, L] as floats), as
        ZImagePipeline._encode_prompt computes them before it drops the padding."""
        tok, enc = tokenizers[0], text_encoders[0]
        prompts = [tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False,
                                           add_generation_prompt=True, enable_thinking=True) for c in captions]
        inputs = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                     return_tensors="pt")
        mask = inputs.attention_mask.to(device).bool()
        hidden = enc(input_ids=inputs.input_ids.to(device), attention_mask=mask,
                     output_hidden_states=True).hidden_states[-2]
        return hidden, mask.to(hidden.dtype)

    def predict(self, comps, model, noisy, sigmas, hidden, mask, cfg, dtype):
        features = [h[m.bool()].to(dtype) for h, m in zip(hidden, mask)]
        latents = list(noisy.to(dtype).unsqueeze(2).unbind(0))  # [C, 1, H, W] each: one frame
        out = model(latents, (1 - sigmas).float(), features, return_dict=False)[0]  # float32 t, as the script
        return -torch.stack(out).squeeze(2)

    def single_file_state_dict(self, state_dicts, alphas) -> dict:
        """The transformer's LoRA as `diffusion_model.<diffusers module>` + alpha (keys_zimage): what ComfyUI and
        ZImagePipeline both load. No text encoder trains here."""
        return keys_zimage.to_single_file(state_dicts["unet"], alphas["unet"])

    def checkpoint_state_dict(self, transformer) -> dict:
        """A full fine-tune's single file: ComfyUI's names, as Comfy-Org's z_image_turbo_bf16 (keys/checkpoints.py)."""
        return zimage_checkpoint(transformer.state_dict())

    def image_tokens(self, latent_h, latent_w) -> int:
        return (latent_h // 2) * (latent_w // 2)

    def base_model_version(self, comps):
        return "z_image"  # musubi-tuner's architecture_full_name

    def modelspec_architecture(self, comps, kind="lora"):
        return f"Z-Image/{kind}"  # musubi-tuner's sai_model_spec id
