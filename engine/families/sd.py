"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, epsilon or v-prediction."""
from __future__ import annotations


from .base import (Components, Family, ModelError, ModelSource, load_error, load_pretrained, load_vae,
                   single_file_error, tokenize)


def _load_parts(family: Family, source: ModelSource, cfg, weight_dtype, vae_dtype) -> Components:
    """Shared by SD and SDXL: every part from a folder/hub id, or all of them from one file."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    if source.kind == "single_file":
        try:
            pipe = family.pipeline_class.from_single_file(source.location, torch_dtype=weight_dtype)
        except Exception as e:  # diffusers fetches the matching config from the hub
            raise single_file_error(source, e) from None
        tokenizers = [getattr(pipe, n.replace("text_encoder", "tokenizer")) for n in family.text_encoder_names]
        encoders = [getattr(pipe, n) for n in family.text_encoder_names]
        vae = load_vae(cfg, source, vae_dtype) if cfg.pretrained_vae_model_name_or_path else pipe.vae.to(vae_dtype)
        noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        return Components(family, source, tokenizers, encoders, vae, pipe.unet, noise_scheduler)
    try:
        from transformers import CLIPTokenizer

        tokenizers, encoders = [], []
        for name, cls in zip(family.text_encoder_names, family.text_encoder_classes()):
            tokenizers.append(load_pretrained(CLIPTokenizer, source, cfg, name.replace("text_encoder", "tokenizer")))
            encoders.append(load_pretrained(cls, source, cfg, name, weight_dtype))
        unet = load_pretrained(UNet2DConditionModel, source, cfg, "unet", weight_dtype)
        noise_scheduler = load_pretrained(DDPMScheduler, source, cfg, "scheduler")
        vae = load_vae(cfg, source, vae_dtype)
    except ModelError:
        raise
    except OSError as e:
        raise load_error(source, e) from None
    for tok in tokenizers:  # transformers 5 may not restore it from tokenizer.json alone
        if not tok.model_max_length or tok.model_max_length > 10_000:
            tok.model_max_length = 77
    return Components(family, source, tokenizers, encoders, vae, unet, noise_scheduler)


class SDFamily(Family):
    name = "sd1"
    label = "Stable Diffusion 1.x"
    text_encoder_names = ("text_encoder",)
    kohya_te_prefixes = {"text_encoder": "lora_te"}
    default_resolution = 512

    @property
    def pipeline_class(self):
        from diffusers import StableDiffusionPipeline
        return StableDiffusionPipeline

    def text_encoder_classes(self):
        from transformers import CLIPTextModel
        return [CLIPTextModel]

    def load(self, source, cfg, weight_dtype):
        return _load_parts(self, source, cfg, weight_dtype, vae_dtype=weight_dtype)

    def encode_prompt(self, tokenizers, text_encoders, captions, device, clip_skip=1):
        ids = tokenize(tokenizers[0], captions).to(device)
        if clip_skip <= 1:
            return text_encoders[0](ids, return_dict=True).last_hidden_state, None
        # an earlier layer's states through the final layer norm, as kohya, AUTOMATIC1111 and diffusers do
        out = text_encoders[0](ids, output_hidden_states=True, return_dict=True)
        encoder = getattr(text_encoders[0], "module", text_encoders[0])  # under DDP
        norm = getattr(encoder, "text_model", encoder).final_layer_norm  # transformers 5 may flatten text_model
        return norm(out.hidden_states[-clip_skip]), None

    def base_model_version(self, comps):
        return "sd_v1"

    def is_v_prediction(self, comps) -> bool:
        return comps.noise_scheduler.config.prediction_type == "v_prediction"

    def modelspec_architecture(self, comps, kind="lora"):
        return f"stable-diffusion-v1/{kind}"

    def _pipeline(self, kwargs):
        return self.pipeline_class(**kwargs, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


class SD2Family(SDFamily):
    name = "sd2"
    label = "Stable Diffusion 2.x"
    default_resolution = 768

    def base_model_version(self, comps):
        return "sd_v2_768_v" if self.is_v_prediction(comps) else "sd_v2"

    def modelspec_architecture(self, comps, kind="lora"):
        arch = "stable-diffusion-v2-768-v" if self.is_v_prediction(comps) else "stable-diffusion-v2-512"
        return f"{arch}/{kind}"


