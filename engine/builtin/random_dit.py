"""Full-size Flux.1 dev and SD3.5 Large with random weights, built straight on the GPU (builtin:random-flux1,
builtin:random-sd35), for speed and memory benchmarks.

A full-size Flux.1 is 12B transformer + 4.7B T5 parameters (34 GB in bf16): neither its disk nor a CPU machine's
memory should hold it. So the built-in's folder holds only what has no weights (model_index.json, each part's
config, the tokenizers, the scheduler) and a RANDOM_MARKER file; loading reads that folder as usual, except that
each model part is constructed from its config with random weights on the CUDA device (random_model). On a
machine without CUDA the builder refuses, naming the tiny built-in to use instead.

Configs are the published ones (black-forest-labs/FLUX.1-dev, stabilityai/stable-diffusion-3.5-large); the
tokenizers are the tiny built-ins' with the real models' sequence lengths, so the shapes and FLOPs are real.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from engine.builtin.fullsize import CLIP_VOCAB
from engine.builtin.tiny import build_tokenizer
from engine.builtin.tiny_dit import FLUX_SCHEDULER, SD3_SCHEDULER, build_t5_tokenizer

RANDOM_MARKER = "RANDOM_WEIGHTS"

FLUX1_TRANSFORMER = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                         num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                         guidance_embeds=True, axes_dims_rope=(16, 56, 56))
SD35_LARGE_TRANSFORMER = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                              num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                              pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm")
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
              decoder_start_token_id=0)
VAE16 = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
             up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
             latent_channels=16, sample_size=1024, use_quant_conv=False, use_post_quant_conv=False)


def is_random(location) -> bool:
    return (Path(location) / RANDOM_MARKER).is_file()


def _needs_cuda(name: str, tiny: str) -> None:
    if not torch.cuda.is_available():
        raise ValueError(f"builtin:{name} is built with random weights straight on a CUDA GPU (a full-size model "
                         f"does not fit this machine's disk or memory), and this machine has none: use "
                         f"builtin:{tiny} here")


def _clip_config(hidden, layers, heads, act, projection=None):
    from transformers import CLIPTextConfig
    tok = build_tokenizer()
    return CLIPTextConfig(vocab_size=CLIP_VOCAB, hidden_size=hidden, intermediate_size=4 * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                          hidden_act=act, projection_dim=projection or hidden, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def _write(path: Path, pipeline: str, parts: dict) -> None:
    """parts: name -> (library, class name, config object or dict). Tokenizers and the scheduler are real files."""
    import diffusers

    path = Path(path)
    index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__}
    for name, (library, cls_name, config) in parts.items():
        index[name] = [library, cls_name]
        (path / name).mkdir(parents=True, exist_ok=True)
        if hasattr(config, "save_pretrained"):  # tokenizers, the scheduler, transformers configs
            config.save_pretrained(path / name)
        else:  # a diffusers model: its config.json, written by the class itself from a weightless instance
            with torch.device("meta"):
                getattr(diffusers, cls_name)(**config).save_config(path / name)
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    (path / RANDOM_MARKER).write_text("random weights: each model part is built from its config on the GPU at load\n")


def _t5_tokenizer(length: int):
    tok = build_t5_tokenizer()
    tok.model_max_length = length
    return tok


def build_random_flux1(path: str | os.PathLike) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import T5Config

    _needs_cuda("random-flux1", "tiny-flux")
    _write(Path(path), "FluxPipeline", {
        "transformer": ("diffusers", "FluxTransformer2DModel", FLUX1_TRANSFORMER),
        "vae": ("diffusers", "AutoencoderKL", {**VAE16, "scaling_factor": 0.3611, "shift_factor": 0.1159}),
        "text_encoder": ("transformers", "CLIPTextModel", _clip_config(768, 12, 12, "quick_gelu")),
        "tokenizer": ("transformers", "CLIPTokenizer", build_tokenizer()),
        "text_encoder_2": ("transformers", "T5EncoderModel", T5Config(**T5_XXL)),
        "tokenizer_2": ("transformers", "T5TokenizerFast", _t5_tokenizer(512)),
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler", FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER)),
    })


def build_random_sd35(path: str | os.PathLike) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import T5Config

    _needs_cuda("random-sd35", "tiny-sd3")
    _write(Path(path), "StableDiffusion3Pipeline", {
        "transformer": ("diffusers", "SD3Transformer2DModel", SD35_LARGE_TRANSFORMER),
        "vae": ("diffusers", "AutoencoderKL", {**VAE16, "scaling_factor": 1.5305, "shift_factor": 0.0609}),
        "text_encoder": ("transformers", "CLIPTextModelWithProjection", _clip_config(768, 12, 12, "quick_gelu", 768)),
        "tokenizer": ("transformers", "CLIPTokenizer", build_tokenizer()),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection", _clip_config(1280, 32, 20, "gelu", 1280)),
        "tokenizer_2": ("transformers", "CLIPTokenizer", build_tokenizer(pad_token="!")),
        "text_encoder_3": ("transformers", "T5EncoderModel", T5Config(**T5_XXL)),
        "tokenizer_3": ("transformers", "T5TokenizerFast", _t5_tokenizer(256)),
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler", FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER)),
    })


def random_model(cls, location, subfolder: str, dtype: torch.dtype | None, quantization=None, device=None):
    """cls built from the folder's config with random weights (seeded) on the CUDA device, in dtype; quantized by
    diffusers' own quantizer when `quantization` (a diffusers quantization config) is given."""
    from engine.families.base import ModelError

    if device is None:
        if not torch.cuda.is_available():
            raise ModelError(f"{location} holds random-weight models built on a CUDA GPU, and this machine has none")
        device = torch.device("cuda", torch.cuda.current_device())
    torch.manual_seed(0)
    if hasattr(cls, "config_class"):  # transformers
        config = cls.config_class.from_pretrained(location, subfolder=subfolder)
        with torch.device(device):
            model = cls(config)
    else:
        config = cls.load_config(location, subfolder=subfolder)
        with torch.device(device):
            model = cls.from_config(config)
    model = (model.to(dtype) if dtype is not None else model).eval()
    return model if quantization is None else _quantize(cls, config, model, dtype, quantization, device)


def _quantize(cls, config, model, dtype, quantization, device):
    """What from_pretrained(quantization_config=...) does with a checkpoint, with the random state dict instead:
    a weightless model prepared by diffusers' quantizer, then loaded (and quantized) tensor by tensor."""
    from accelerate import init_empty_weights
    from diffusers.models.model_loading_utils import load_model_dict_into_meta
    from diffusers.quantizers import DiffusersAutoQuantizer

    quantizer = DiffusersAutoQuantizer.from_config(quantization, pre_quantized=False)
    state = model.state_dict()
    del model
    with init_empty_weights():
        skeleton = cls.from_config(config)
    quantizer.preprocess_model(model=skeleton, device_map={"": device}, keep_in_fp32_modules=[])
    load_model_dict_into_meta(skeleton, state, dtype=dtype, hf_quantizer=quantizer, device_map={"": device})
    del state
    quantizer.postprocess_model(skeleton)
    skeleton.hf_quantizer = quantizer
    skeleton.register_to_config(quantization_config=quantization)
    return skeleton.eval()
