"""Full-size SD 1.5 and SDXL pipelines with random weights, from the published configs (no download).

For speed and memory benchmarks: same shapes and FLOPs as the real models, nothing learned. Saved in
fp16 (3.4 GB / 6.9 GB on disk) and built once into the cache like every built-in.
"""
from __future__ import annotations

import os

from engine.builtin.tiny import _seeded, build_tokenizer, save_sd_pipeline, save_sdxl_pipeline

CLIP_VOCAB = 49408  # the real vocabulary size, so embedding tables weigh what they weigh in the real models

# The published UNet configs (also what engine/tools maps names and shapes with when no base model is given).
SD15_UNET = dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                 cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
SD2_UNET = {**SD15_UNET, "sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
            "use_linear_projection": True}
SDXL_UNET = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))


def _clip(hidden: int, layers: int, heads: int, act: str, projection: int | None = None, tokenizer=None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=CLIP_VOCAB, hidden_size=hidden, intermediate_size=4 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                         hidden_act=act, projection_dim=projection or hidden,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def _vae(scaling_factor: float, sample_size: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                         sample_size=sample_size, scaling_factor=scaling_factor)


def build_random_sd15(path: str | os.PathLike) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    with _seeded():
        tok = build_tokenizer()
        unet = UNet2DConditionModel(**SD15_UNET)
        save_sd_pipeline(path, unet, _vae(0.18215, 512), _clip(768, 12, 12, "quick_gelu", tokenizer=tok), tok,
                         dtype=torch.float16)


def build_random_sdxl(path: str | os.PathLike) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    with _seeded():
        tok, tok2 = build_tokenizer(), build_tokenizer(pad_token="!")
        unet = UNet2DConditionModel(**SDXL_UNET)
        save_sdxl_pipeline(path, unet, _vae(0.13025, 1024), _clip(768, 12, 12, "quick_gelu", tokenizer=tok),
                           _clip(1280, 32, 20, "gelu", projection=1280, tokenizer=tok2), tok, tok2,
                           dtype=torch.float16)
