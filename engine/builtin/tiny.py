"""Tiny random SD 1.x / SDXL pipelines and a small CLIP-style tokenizer, built offline from configs.

The shapes mirror the real models (8x VAE, cross-attention in the down, mid and up paths, SDXL's
two text encoders and "text_time" conditioning) so that every training code path runs, but every
width is tiny so a 64px LoRA step takes a fraction of a second on CPU.

Heavy libraries are imported inside the functions: importing engine.builtin (to check a name) must
stay cheap.
"""
from __future__ import annotations

import heapq
import os
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

SEED = 0
HIDDEN = 32  # width of each tiny text encoder
TIME_EMBED_DIM = 8  # SDXL addition_time_embed_dim
# SD 1.5 / SDXL training noise schedule (both use the same betas).
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)

# Words that ordinary test prompts use; each becomes a single token (see build_tokenizer).
_WORDS = """
a an the of on in at with and or to for from by as is it this that near under over behind
photo photograph picture image painting drawing sketch render illustration art artwork style
portrait landscape close up closeup view shot macro studio cinematic lighting light dark bright
high quality detailed highly sharp focus blurry low bad ugly masterpiece best worst realistic
photorealistic anime cartoon watercolor oil pencil ink digital concept pixel flat simple
red green blue yellow orange purple pink brown black white grey gray gold silver cyan magenta
circle square triangle rectangle star heart cross ring dot dots line lines stripe stripes
shape shapes pattern texture gradient checkerboard grid solid round small large big tiny
background foreground center left right top bottom middle corner edge plain empty
sks ohwx toy figure object subject person man woman boy girl child face head hand eyes hair
dog cat bird horse fish cow car house tree flower flowers sky sun moon cloud clouds water sea
ocean river lake mountain mountains forest field grass snow rain street city road building
table chair cup bottle book box ball apple window door wall floor room garden beach night day
morning evening sunset sunrise summer winter spring autumn old new young happy sad wearing
sitting standing walking running holding looking smiling playing flying swimming
one two three four five six seven eight nine ten many some very more most
artist trending artstation smooth soft hard
wooden metal glass stone plastic paper fabric shiny matte glowing neon vintage modern
""".split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table, in CLIP's order (the first 256 vocab ids)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _merge_pair(seq: list[str], pair: tuple[str, str]) -> list[str]:
    out, i = [], 0
    while i < len(seq):
        if i + 1 < len(seq) and (seq[i], seq[i + 1]) == pair:
            out.append(seq[i] + seq[i + 1])
            i += 2
        else:
            out.append(seq[i])
            i += 1
    return out


def _train_merges(words: list[str], byte_chars: dict[int, str], end_of_word: str = "</w>"
                  ) -> list[tuple[str, str]]:
    """Greedy BPE until every word is one token. Most frequent pair first, ties broken on the pair
    itself, so it is deterministic. Pair counts are updated incrementally (a heap with lazy
    deletion) because recounting every word each round took ~0.4 s."""
    # Each word as its byte characters, the last one carrying the end-of-word marker (CLIP's; Qwen has none).
    seqs = []
    for w in dict.fromkeys(words):  # dedupe, keep order
        chars = [byte_chars[b] for b in w.encode("utf-8")]
        chars[-1] += end_of_word
        seqs.append(chars)
    counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, s in enumerate(seqs):
        for p in zip(s, s[1:]):
            counts[p] += 1
            where[p].add(i)
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)
    merges = []
    while heap:
        neg, best = heapq.heappop(heap)
        if counts.get(best, 0) != -neg:
            continue  # stale entry: that pair's count changed since it was pushed
        merges.append(best)
        touched = set()
        for i in where.pop(best):
            old, new = seqs[i], _merge_pair(seqs[i], best)
            for p in zip(old, old[1:]):
                counts[p] -= 1
                touched.add(p)
            for p in zip(new, new[1:]):
                counts[p] += 1
                where[p].add(i)
                touched.add(p)
            seqs[i] = new
        for p in touched:
            if counts[p] > 0:
                heapq.heappush(heap, (-counts[p], p))
            else:
                counts.pop(p)
    return merges


def build_tokenizer(pad_token: str = "<|endoftext|>", extra_words: tuple[str, ...] = ()):
    """A small CLIP-layout BPE tokenizer: 256 byte chars, the same + "</w>", merged tokens, bos, eos.

    Any text still tokenizes (byte fallback); the built-in word list encodes to one token per word.
    pad_token="!" gives SDXL's tokenizer_2 convention.
    """
    from transformers import CLIPTokenizer

    byte_chars = _bytes_to_unicode()
    base = list(byte_chars.values())
    vocab: dict[str, int] = {}
    for tok in base + [c + "</w>" for c in base]:
        vocab[tok] = len(vocab)
    merges = _train_merges(_WORDS + list(extra_words), byte_chars)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))  # two merges can spell the same token; keep ids dense
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    # transformers 5 no longer defaults model_max_length to CLIP's 77 when built from scratch.
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)


def _text_config(tokenizer, hidden_act: str, projection_dim: int = HIDDEN):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection_dim,
        hidden_act=hidden_act,
        # The pooled output is taken at the first eos, so the ids must be the tokenizer's.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _vae(scaling_factor: float):
    """4 blocks -> downsamples by 8 like the real VAE: a 64px image is an 8x8x4 latent."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def _unet(**extra):
    """Attention blocks (to_q/to_k/to_v/to_out.0) in the down, mid and up paths, so LoRA targets exist."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,  # latent size; pipelines default to 8 * 8 = 64px images
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        norm_num_groups=32,
        **extra,
    )


@contextmanager
def _seeded():
    """Fixed global seed for module init (same weights every build), restoring the caller's RNG after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        yield


def save_sd_pipeline(path, unet, vae, text_encoder, tokenizer, dtype=None) -> None:
    """An SD 1.x pipeline from its parts (PNDM sampling scheduler with SD 1.5's exact config), saved to path."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=PNDMScheduler(**BETAS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False,
                                prediction_type="epsilon"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    if dtype is not None:
        pipe.to(dtype)
    pipe.save_pretrained(Path(path), safe_serialization=True)


def save_sdxl_pipeline(path, unet, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, dtype=None) -> None:
    """An SDXL pipeline from its parts (Euler, like SDXL base), saved to path."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        scheduler=EulerDiscreteScheduler(**BETAS, steps_offset=1, timestep_spacing="leading",
                                         interpolation_type="linear", prediction_type="epsilon",
                                         use_karras_sigmas=False),
        add_watermarker=False,
    )
    if dtype is not None:
        pipe.to(dtype)
    pipe.save_pretrained(Path(path), safe_serialization=True)


def build_tiny_sd(path: str | os.PathLike) -> None:
    """Tiny SD 1.x pipeline saved to path."""
    from transformers import CLIPTextModel

    with _seeded():
        tokenizer = build_tokenizer()
        save_sd_pipeline(path, _unet(cross_attention_dim=HIDDEN), _vae(scaling_factor=0.18215),
                         CLIPTextModel(_text_config(tokenizer, "quick_gelu")), tokenizer)


def build_tiny_sdxl(path: str | os.PathLike) -> None:
    """Tiny SDXL pipeline: two text encoders, "text_time" added conditioning."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    with _seeded():
        tokenizer = build_tokenizer()
        tokenizer_2 = build_tokenizer(pad_token="!")  # as in SDXL's tokenizer_2
        unet = _unet(
            cross_attention_dim=2 * HIDDEN,  # both encoders' hidden states are concatenated
            transformer_layers_per_block=1,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=TIME_EMBED_DIM,
            # 6 size/crop numbers, each time-embedded, plus encoder 2's pooled projection.
            projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + HIDDEN,
        )
        save_sdxl_pipeline(path, unet, _vae(scaling_factor=0.13025),
                           CLIPTextModel(_text_config(tokenizer, "quick_gelu")),
                           CLIPTextModelWithProjection(_text_config(tokenizer_2, "gelu", projection_dim=HIDDEN)),
                           tokenizer, tokenizer_2)
