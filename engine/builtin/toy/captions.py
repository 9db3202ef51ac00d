"""Captions for builtin:toy's own training data: the world's caption, often with words it does not know.

Users add trigger words ("sks, a red star ..."), rare tokens and punctuation to prompts, and an adaptor's
first job is to be trained on such captions. A text encoder that only ever saw the world's 14 words reacts to
an unseen token with hidden states the UNet never met, and the base then draws specks. So some captions
carry words from the tokenizer's list, random letter strings (which split into byte pieces) and punctuation,
at random places; and some drop the colour or the background ("a circle", "a red circle"), the short
prompts DreamBooth and textual inversion use. The image does not change: the model learns to ignore them.
"""
from __future__ import annotations

import string

import numpy as np

from engine.builtin.toy import world

NOISY_RATE = 0.4  # captions with one to three inserted pieces
PARTIAL_RATE = 0.15  # captions without their colour, background or both
PUNCTUATION = tuple(",.;:!?-()'\"&/+*#") + ("...", ",,", "-,")
# the world's own words, and the concepts the presets teach (a base that ignores "star" could not learn it)
WORLD_WORDS = {"a", "an", "on", "background", *world.COLOURS, *world.BACKGROUNDS, *world.SHAPES, *world.FILLS}


def noise_words() -> list[str]:
    """The tokenizer's whole-word list less the world's words: trigger words such as sks and ohwx among them,
    as a real base model has seen rare tokens in its captions without their changing the picture."""
    from engine.builtin.tiny import _WORDS
    from engine.builtin.toy.arch import TOY_WORDS

    return sorted({w for w in (*_WORDS, *TOY_WORDS) if w not in WORLD_WORDS})


def _piece(rng: np.random.Generator, words: list[str]) -> str:
    kind = rng.random()
    if kind < 0.45:
        return str(rng.choice(words))
    if kind < 0.75:  # an unknown string: the BPE splits it into pieces that are rarely whole words
        return "".join(rng.choice(list(string.ascii_lowercase + string.digits), size=int(rng.integers(2, 7))))
    return str(rng.choice(PUNCTUATION))


def _partial(scene: world.Scene, rng: np.random.Generator) -> list[str]:
    drop = int(rng.integers(0, 3))  # 0: the colour, 1: the background, 2: both
    words = ([] if drop != 1 else [scene.colour]) + [scene.shape]
    if scene.fill == "striped":
        words.insert(0, "striped")
    article = "an" if words[0][0] in "aeiou" else "a"
    tail = [] if drop != 0 else ["on", "a", scene.background, "background"]
    return [article, *words, *tail]


def training_caption(scene: world.Scene, rng: np.random.Generator, words: list[str]) -> str:
    """The scene's caption, as it is (about half the time), shortened, or with unknown pieces inserted."""
    tokens = _partial(scene, rng) if rng.random() < PARTIAL_RATE else scene.caption().split()
    if rng.random() < NOISY_RATE:
        for _ in range(int(rng.integers(1, 4))):
            piece = _piece(rng, words)
            at = int(rng.integers(0, len(tokens) + 1))
            if at == 0 and rng.random() < 0.5:
                piece += ","  # "sks, a red circle ...": how build_caption joins a trigger word
            tokens.insert(at, piece)
    return " ".join(tokens)


def training_captions(scenes: list[world.Scene], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = noise_words()
    return [training_caption(s, rng, words) for s in scenes]
