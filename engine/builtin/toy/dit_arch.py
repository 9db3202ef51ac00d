"""builtin:toy-dit's parts before training: a small Flux.1 (schnell-like) transformer over builtin:toy's VAE and
CLIP, a small random T5, and a static-shift flow-matching sampler sized for 64 image tokens.

Shapes: 64x64 images -> the toy VAE's 16x16x4 latents -> Flux's 2x2 packing: 8x8 = 64 tokens of 16 channels.
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.builtin.toy.arch import TOY_WORDS

WIDTH, HEADS = 128, 4  # transformer width (heads x head dim)
DOUBLE_BLOCKS, SINGLE_BLOCKS = 2, 4
T5_LENGTH = 24  # T5 tokens per prompt: the longest world caption after a PREFIXES prefix fits
# No resolution-dependent shift: Flux.1 dev's shifts exp(0.5..1.15) are set for 256..4096 tokens; at 64 tokens a
# shift of 1 (plain rectified flow, as the SD3 paper's shift ~ sqrt(tokens / 4096) rule gives below 1 anyway) is used.
SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
# Flux.1 schnell-like: no guidance embedding (there is no teacher to distil one from), so sampling uses true
# classifier-free guidance against the empty prompt, which the build's caption dropout trains.
CFG_SCALE = 4.0


def call_kwargs(pipe) -> dict:
    """What a FluxPipeline call of this model needs beyond the prompt: FluxPipeline's own defaults are a 512-pixel
    image (default_sample_size 128 x the VAE's 4) and 512 T5 tokens, neither of which this model was trained on."""
    return {"height": 64, "width": 64, "max_sequence_length": pipe.tokenizer_2.model_max_length,
            "true_cfg_scale": CFG_SCALE, "negative_prompt": ""}


def make_transformer(pooled_dim: int, t5_dim: int):
    from diffusers import FluxTransformer2DModel

    head = WIDTH // HEADS
    rope = (head - 2 * (3 * head // 8), 3 * head // 8, 3 * head // 8)  # Flux's (16, 56, 56) split, scaled
    return FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=DOUBLE_BLOCKS,
                                  num_single_layers=SINGLE_BLOCKS, attention_head_dim=head, num_attention_heads=HEADS,
                                  joint_attention_dim=t5_dim, pooled_projection_dim=pooled_dim, guidance_embeds=False,
                                  axes_dims_rope=rope)


def save_initial_pipeline(path: Path, toy: Path) -> None:
    """builtin:toy's trained VAE, CLIP and tokenizer with a random transformer and a random small T5 (frozen in
    training; its word list holds the world's words): the base that full training starts from."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel, CLIPTokenizer

    from engine.builtin.tiny_dit import _t5, build_t5_tokenizer

    vae = AutoencoderKL.from_pretrained(toy / "vae")
    vae.register_to_config(shift_factor=0.0)  # FluxPipeline adds it when decoding; None would fail
    text_encoder = CLIPTextModel.from_pretrained(toy / "text_encoder")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tokenizer_2 = build_t5_tokenizer(extra_words=TOY_WORDS, max_length=T5_LENGTH)
        t5 = _t5(tokenizer_2)
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae,
                            text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(toy / "tokenizer"),
                            text_encoder_2=t5, tokenizer_2=tokenizer_2,
                            transformer=make_transformer(text_encoder.config.hidden_size, t5.config.d_model))
    pipe.save_pretrained(path, safe_serialization=True)
