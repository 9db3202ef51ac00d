"""Sampling builtin:toy with fixed seeds and reading the images with both judges: the classifier (judge.py)
and the pixel judge (pixel_judge.py). The build's quality check and the bench use these."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.builtin.toy import world
from engine.builtin.toy.pixel_judge import Match, match

# what a user might put before a prompt: trigger words (which the build's caption noise also draws, among the
# tokenizer's other words), and strings and punctuation it is unlikely to have drawn in that form
PREFIXES = ("sks, ", "ohwx ", "qzx7, ", "(photo) ", "zkw: ")


def world_prompts(n: int = 64, seed: int = 777) -> list[world.Scene]:
    """Ordinary prompts of the world: every shape and colour equally often, backgrounds at random."""
    import numpy as np

    rng = np.random.default_rng(seed)
    combos = [(s, c) for s in world.BASE_SHAPES for c in world.COLOURS]
    return [world.Scene(shape=s, colour=c, background=str(rng.choice(list(world.BACKGROUNDS))))
            for s, c in (combos[i % len(combos)] for i in range(n))]


def call_kwargs(pipe, n: int) -> dict:
    """A toy pipeline's call settings beyond the prompt: builtin:toy's guidance (arch.GUIDANCE); builtin:toy-dit's
    for a Flux pipeline (dit_arch.call_kwargs), with one negative prompt per image."""
    if not type(pipe).__name__.startswith("Flux"):
        from engine.builtin.toy.arch import GUIDANCE

        return {"guidance_scale": GUIDANCE}
    from engine.builtin.toy.dit_arch import call_kwargs as flux_kwargs

    kw = flux_kwargs(pipe)
    return {**kw, "negative_prompt": [kw["negative_prompt"]] * n}


def sample(pipe, prompts: list[str], steps: int | None = None, seed: int = 0, batch: int = 32):
    """Images for prompts, image i from seed + i, with the pipeline's own sampler (its default steps unless
    `steps`)."""
    kw = {"num_inference_steps": steps} if steps else {}
    images = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images += pipe(chunk, generator=gens, **kw, **call_kwargs(pipe, len(chunk))).images
    return images


@dataclass(frozen=True)
class Reading:
    """Both judges on one image of a prompted scene."""
    classifier: dict[str, str]  # shape, colour, background, fill as the classifier reads them
    pixel: Match  # the best placement of every shape and fill, read with the prompt's colours

    def sees(self, attribute: str, value: str) -> bool:
        """The classifier and the pixel judge both see it (colours and backgrounds: the classifier alone)."""
        seen = self.classifier[attribute] == value
        return seen and self.pixel.sees(attribute, value) if attribute in ("shape", "fill") else seen


def read(judge, images, scenes: list[world.Scene]) -> list[Reading]:
    from engine.builtin.toy.judge import predict

    return [Reading(c, match(im, s)) for c, im, s in zip(predict(judge, images), images, scenes)]


def adherence(pipe, judge, n: int = 64, steps: int | None = None, prefixed: bool = False) -> dict[str, float]:
    """How often the prompted shape, colour and background come out in ordinary world prompts (each after one
    of PREFIXES, if `prefixed`): as the classifier reads them, the shape as the pixel judge reads it, and all
    three with both judges agreeing on the shape ("strict")."""
    scenes = world_prompts(n)
    prompts = [(PREFIXES[i % len(PREFIXES)] if prefixed else "") + s.caption() for i, s in enumerate(scenes)]
    got = read(judge, sample(pipe, prompts, steps), scenes)

    def rate(ok) -> float:
        return round(sum(ok(g.classifier, g, s) for g, s in zip(got, scenes)) / n, 4)

    return {
        "shape": rate(lambda c, g, s: c["shape"] == s.shape),
        "colour": rate(lambda c, g, s: c["colour"] == s.colour),
        "background": rate(lambda c, g, s: c["background"] == s.background),
        "shape_and_colour": rate(lambda c, g, s: c["shape"] == s.shape and c["colour"] == s.colour),
        "shape_pixel": rate(lambda c, g, s: g.pixel.sees("shape", s.shape)),
        "strict": rate(lambda c, g, s: g.sees("shape", s.shape) and c["colour"] == s.colour
                       and c["background"] == s.background),
        "pixel_iou": round(sum(g.pixel.caption_iou for g in got) / n, 4),
    }
