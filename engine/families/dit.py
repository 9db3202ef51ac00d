"""What the flow-matching DiT families (Flux.1, SD3/SD3.5, Z-Image, Qwen-Image) share: a transformer denoiser,
text encoders (CLIP + T5, or an LLM), a 16-channel VAE, FlowMatchEulerDiscreteScheduler, and LoRA files under
`transformer.` names.

Components.unet holds the denoiser whatever its kind (the name the UNet families gave the slot); the family's
`denoiser_name` ("transformer") is what the pipeline and the diffusers LoRA file call it.
"""
from __future__ import annotations

import torch

from engine.export import canonical_keys, peft_to_kohya
from engine.objective_flow import flow_loss
from engine.quantize import load_transformer

from .base import Components, Family, ModelError, load_error, load_pretrained, load_vae, tokenize
from .keys import lycoris as keys_lycoris


class FlowFamily(Family):
    objective = "flow"
    denoiser_name = "transformer"
    transformer_class = "?"  # a diffusers class name
    default_weighting = "none"  # weighting_scheme when the config leaves it unset
    default_max_sequence_length = 512
    t5_name = "text_encoder_2"  # the T5's component name (the sequence encoder: an LLM in newer families)
    vae_class = "AutoencoderKL"  # a diffusers class name
    lora_default_targets: tuple[str, ...] = ()
    default_resolution = 1024
    lora_keys = None  # the family's keys module: check_module(path) (and comfy_swapped(path, parts) where needed)

    def text_encoder_classes(self) -> list:
        raise NotImplementedError

    def tokenizer_class(self, name: str):
        """The tokenizer of text encoder `name`: the T5's or a CLIP's (an LLM family says its own)."""
        from transformers import CLIPTokenizer, T5TokenizerFast
        return T5TokenizerFast if name == self.t5_name else CLIPTokenizer

    # ---- loading
    def load(self, source, cfg, weight_dtype) -> Components:
        import diffusers

        if source.kind == "single_file":
            raise ModelError(f"{source.location}: a single-file {self.label} checkpoint holds the transformer "
                             "only; give the model's diffusers folder or hub id as pretrained_model_name_or_path "
                             "(its text encoders and VAE are needed too) and this file as "
                             "pretrained_transformer_model_name_or_path")
        try:
            tokenizers, encoders = [], []
            for name, cls in zip(self.text_encoder_names, self.text_encoder_classes()):
                tokenizers.append(load_pretrained(self.tokenizer_class(name), source, cfg,
                                                  name.replace("text_encoder", "tokenizer")))
                encoders.append(load_pretrained(cls, source, cfg, name, weight_dtype))
            transformer = load_transformer(getattr(diffusers, self.transformer_class), source, cfg, weight_dtype)
            scheduler = load_pretrained(diffusers.FlowMatchEulerDiscreteScheduler, source, cfg, "scheduler")
            vae = load_vae(cfg, source, weight_dtype, getattr(diffusers, self.vae_class))
        except ModelError:
            raise
        except OSError as e:
            raise load_error(source, e) from None
        wanted = getattr(cfg, "max_sequence_length", None) or self.default_max_sequence_length
        for name, tok in zip(self.text_encoder_names, tokenizers):
            if name == self.t5_name:  # training, caching and sampling all read the length from here
                tok.model_max_length = min(wanted, tok.model_max_length or wanted)
            elif not tok.model_max_length or tok.model_max_length > 10_000:
                tok.model_max_length = 77
        return Components(self, source, tokenizers, encoders, vae, transformer, scheduler)

    # ---- text
    def t5_embeds(self, tokenizer, encoder, captions, device) -> torch.Tensor:
        ids = tokenize(tokenizer, captions).to(device)
        return encoder(ids, output_hidden_states=False)[0]

    def max_sequence_length(self, comps) -> int:
        return comps.tokenizers[self.text_encoder_names.index(self.t5_name)].model_max_length

    # ---- the denoiser's forward: latents [B, C, H, W] in, the flow prediction (noise - x0) in the same layout
    def predict(self, comps, model, noisy, sigmas, hidden, pooled, cfg, dtype) -> torch.Tensor:
        raise NotImplementedError

    def image_tokens(self, latent_h: int, latent_w: int) -> int:
        """Tokens the transformer sees for one image: what the resolution-dependent shift is a function of."""
        raise NotImplementedError

    def prediction_type(self, comps) -> str:
        return "flow"

    # ---- sampling
    def make_pipeline(self, comps, unet=None, text_encoders=None):
        import diffusers

        kwargs = {"vae": comps.vae, "transformer": unet or comps.unet,
                  "scheduler": diffusers.FlowMatchEulerDiscreteScheduler.from_config(comps.noise_scheduler.config)}
        for name, te, tok in zip(self.text_encoder_names, text_encoders or comps.text_encoders, comps.tokenizers):
            kwargs[name] = te
            kwargs[name.replace("text_encoder", "tokenizer")] = tok
        return self.pipeline_class(**kwargs)

    def lycoris_state_dict(self, state_dicts, alphas) -> dict:
        """A LoHa / LoKr / DoRA run's single file: the transformer in LyCORIS' layout (keys/lycoris.py), the CLIPs
        under kohya's `lora_te1_` / `lora_te2_`, which ComfyUI maps onto clip_l / clip_g."""
        keys = self.lora_keys
        out = keys_lycoris.to_single_file(state_dicts["unet"], alphas["unet"], keys.check_module,
                                          getattr(keys, "comfy_swapped", lambda path, parts: False))
        for component, sd in state_dicts.items():
            if component != "unet":
                out.update(peft_to_kohya(canonical_keys(component, sd), self.kohya_te_prefixes[component],
                                         canonical_keys(component, alphas[component])))
        return out

    def call_kwargs(self, pipe) -> dict:
        """What every pipeline call adds: the T5 length training used."""
        tok = getattr(pipe, self.t5_name.replace("text_encoder", "tokenizer"))
        return {"max_sequence_length": tok.model_max_length}


    def compute_loss(self, batch, comps, model, encode_text, cfg, device, weight_dtype, gen):
        return flow_loss(batch, comps, model, encode_text, cfg, device, weight_dtype, gen)
