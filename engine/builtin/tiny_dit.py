"""Tiny random DiT pipelines (Flux.1, SD3, Z-Image, Qwen-Image), built offline from configs in seconds, for tests.

The shapes follow the real models where the code paths depend on them: a 16-channel VAE without quant convs,
CLIP (pooled) + T5 (sequence) text encoders, Flux's 2x2 latent packing and guidance embedding, SD3's two CLIPs
with projections, the flow-matching scheduler with its shift. Every width is tiny.

The T5 tokenizer is a Unigram model (a WordLevel one does not reload in transformers 5), wrapped in
T5TokenizerFast, over the same word list as the tiny CLIP tokenizer plus single characters, so any text still
tokenizes.
"""
from __future__ import annotations

import os
from pathlib import Path

from engine.builtin.tiny import _WORDS, HIDDEN, _bytes_to_unicode, _seeded, _text_config, build_tokenizer

T5_DIM = 2 * HIDDEN  # SD3 pads the two CLIPs' concatenated states (2 x HIDDEN) to T5's width
T5_MAX_LENGTH = 32  # the tiny models' max_sequence_length (the real ones use 256 / 512)
# Flux.1 dev's scheduler: static shift 3, resolution-dependent shift between 0.5 and 1.15
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                      max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)


def build_t5_tokenizer(extra_words: tuple[str, ...] = (), max_length: int = T5_MAX_LENGTH):
    """A small Unigram T5 tokenizer: pad 0, eos 1, unk 2, "▁word" pieces (the built-in list, then extra_words)
    and single characters."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import T5TokenizerFast

    chars = sorted({c for w in _WORDS for c in w} | set("0123456789,.;:!?'\"-()"))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -1.0) for w in dict.fromkeys((*_WORDS, *extra_words))]
    pieces += [(c, -5.0) for c in chars] + [("▁" + c, -4.0) for c in chars]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    from tokenizers.processors import TemplateProcessing
    tok.post_processor = TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                            special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0, model_max_length=max_length)


def _t5(tokenizer):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=T5_DIM, d_kv=16, d_ff=64, num_layers=2,
                                   num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def _vae16(scaling_factor: float, shift_factor: float):
    """8x downsampling, 16 latent channels, no quant convs: the Flux / SD3 VAE layout."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16, 16, 32, 32),
                         layers_per_block=1, latent_channels=16, norm_num_groups=8, sample_size=64,
                         scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=False,
                         use_post_quant_conv=False)


def build_tiny_flux(path: str | os.PathLike) -> None:
    """Tiny Flux.1-dev-like pipeline: CLIP pooled + T5 sequence, packed latents, guidance embedding."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    with _seeded():
        tokenizer, tokenizer_2 = build_tokenizer(), build_t5_tokenizer()
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                             attention_head_dim=16, num_attention_heads=2,
                                             joint_attention_dim=T5_DIM, pooled_projection_dim=HIDDEN,
                                             guidance_embeds=True, axes_dims_rope=(4, 6, 6))
        pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
                            vae=_vae16(0.3611, 0.1159), text_encoder=CLIPTextModel(_text_config(tokenizer, "quick_gelu")),
                            tokenizer=tokenizer, text_encoder_2=_t5(tokenizer_2), tokenizer_2=tokenizer_2,
                            transformer=transformer)
        pipe.save_pretrained(Path(path), safe_serialization=True)


def build_tiny_sd3(path: str | os.PathLike) -> None:
    """Tiny SD3-like pipeline: MMDiT, two CLIPs with projections (pooled concatenated) and T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    with _seeded():
        tokenizer, tokenizer_2, tokenizer_3 = build_tokenizer(), build_tokenizer(pad_token="!"), build_t5_tokenizer()
        transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=16, num_layers=2,
                                            attention_head_dim=8, num_attention_heads=4,
                                            joint_attention_dim=T5_DIM, caption_projection_dim=32,
                                            pooled_projection_dim=2 * HIDDEN, out_channels=16,
                                            pos_embed_max_size=32)
        pipe = StableDiffusion3Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER), vae=_vae16(1.5305, 0.0609),
            text_encoder=CLIPTextModelWithProjection(_text_config(tokenizer, "quick_gelu")), tokenizer=tokenizer,
            text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer_2, "gelu")), tokenizer_2=tokenizer_2,
            text_encoder_3=_t5(tokenizer_3), tokenizer_3=tokenizer_3, transformer=transformer)
        pipe.save_pretrained(Path(path), safe_serialization=True)


# ---- Z-Image: a Qwen3 LLM text encoder behind a chat template, a single-stream DiT, the Flux VAE
# Z-Image-Turbo's scheduler: a static shift of 3 (the pipeline passes mu, which a static scheduler ignores)
ZIMAGE_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False)
# Qwen3's chat template, reduced to what ZImagePipeline renders: one user turn, the assistant's header, and the
# empty think block only when thinking is switched off (the pipeline passes enable_thinking=True: none)
QWEN3_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def build_qwen3_tokenizer():
    """A small byte-level BPE in Qwen2Tokenizer's layout: the 256 byte characters, each built-in word as one token
    (with and without its leading space, "Ġ"), and Qwen's special tokens; any text still tokenizes."""
    from transformers import Qwen2Tokenizer

    byte_chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(byte_chars.values())}
    merges: list[tuple[str, str]] = []
    # the spaced words' merges first: their chains then never lose a pair to a merge from inside another word
    for spelled in [" " + w for w in dict.fromkeys(_WORDS)] + list(dict.fromkeys(_WORDS)):
        chars = [byte_chars[b] for b in spelled.encode("utf-8")]
        for i in range(1, len(chars)):  # left to right: each merge extends the word's first token
            left, token = "".join(chars[:i]), "".join(chars[:i + 1])
            if token not in vocab:
                merges.append((left, chars[i]))
                vocab[token] = len(vocab)
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        vocab[special] = len(vocab)
    return Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=T5_MAX_LENGTH,
                          chat_template=QWEN3_CHAT_TEMPLATE, additional_special_tokens=["<|im_start|>", "<|im_end|>"])


def build_tiny_zimage(path: str | os.PathLike) -> None:
    """Tiny Z-Image-like pipeline: Qwen3 encoder (penultimate states), single-stream DiT with refiners, Flux VAE."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    with _seeded():
        tokenizer = build_qwen3_tokenizer()
        text_encoder = Qwen3Model(Qwen3Config(vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                              head_dim=16, max_position_embeddings=512))
        # head_dim 16 = sum(axes_dims); axes_lens bound the caption length and the image's token grid
        transformer = ZImageTransformer2DModel(all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32,
                                               n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2,
                                               cap_feat_dim=HIDDEN, axes_dims=[8, 4, 4], axes_lens=[256, 64, 64])
        with torch.no_grad():  # the pad tokens start empty in some diffusers versions: give them values
            transformer.x_pad_token.normal_(0, 0.02)
            transformer.cap_pad_token.normal_(0, 0.02)
        pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**ZIMAGE_SCHEDULER), vae=_vae16(0.3611, 0.1159),
                              text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
        pipe.save_pretrained(Path(path), safe_serialization=True)


# Qwen-Image's prompt template (QwenImagePipeline.prompt_template_encode): its words are single tokens in the tiny
# tokenizer, as in Qwen's, so the template before the prompt is the 34 tokens the pipeline drops.
QWEN_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
                 "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
                 "<|im_end|>\n<|im_start|>assistant\n")
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
QWEN_MAX_LENGTH = 32  # the tiny model's max_sequence_length (Qwen-Image's default is 512)
# Qwen/Qwen-Image's scheduler: resolution-dependent exponential shift, stretched to a terminal sigma of 0.02
QWEN_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                      base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                      time_shift_type="exponential")


def build_qwen_tokenizer():
    """A small byte-level BPE Qwen2Tokenizer: Qwen's pre-tokenizer (the class builds it), the 256 byte characters,
    merges that make each built-in word and template word one token (with and without its leading space), and
    Qwen's chat special tokens."""
    import re

    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    from engine.builtin.tiny import _bytes_to_unicode, _train_merges

    words = re.findall(r"[A-Za-z]+", QWEN_TEMPLATE.replace("<|im_start|>", " ").replace("<|im_end|>", " ")) + _WORDS
    byte_chars = _bytes_to_unicode()
    merges = _train_merges([p + w for w in words for p in ("", " ")], byte_chars, end_of_word="")
    vocab: dict[str, int] = {c: i for i, c in enumerate(byte_chars.values())}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for special in QWEN_SPECIAL:
        vocab[special] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=QWEN_MAX_LENGTH)
    tok.add_tokens([AddedToken(t, special=True) for t in QWEN_SPECIAL[1:]])
    return tok


def _qwen_text_encoder(tokenizer):
    """A tiny Qwen2.5-VL (its vision tower too, unused for text), 32 wide: the transformer's joint_attention_dim."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = dict(bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
               eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id)
    n = len(tokenizer)  # the vision ids lie outside the vocabulary: text never holds them
    config = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=HIDDEN, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=n, rope_theta=1000000.0,
                         rope_scaling={"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"}, **ids),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=HIDDEN),
        hidden_size=HIDDEN, vocab_size=n, vision_start_token_id=n, vision_end_token_id=n + 1, vision_token_id=n + 2,
        image_token_id=n + 3, video_token_id=n + 4, **ids)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def build_tiny_qwenimage(path: str | os.PathLike) -> None:
    """Tiny Qwen-Image-like pipeline: Qwen2.5-VL text encoder, 8x video VAE with 16 latent channels and Qwen's
    per-channel latents_mean / latents_std (the class defaults), packed latents, Qwen-Image's scheduler."""
    from diffusers import (AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline,
                           QwenImageTransformer2DModel)

    with _seeded():
        tokenizer = build_qwen_tokenizer()
        # 8x down like Qwen's (three downsamples), 8 channels throughout: CPU 3D convolutions are slow
        vae = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True, True])
        transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                                                  attention_head_dim=16, num_attention_heads=2,
                                                  joint_attention_dim=HIDDEN, axes_dims_rope=(8, 4, 4))
        pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER), vae=vae,
                                 text_encoder=_qwen_text_encoder(tokenizer), tokenizer=tokenizer,
                                 transformer=transformer)
        pipe.save_pretrained(Path(path), safe_serialization=True)
