"""Per-step augmentations: caption tag shuffling (kohya's shuffle_caption / keep_tokens) and colour jitter
(torchvision's ColorJitter semantics, done with PIL so torchvision is not needed)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageEnhance

from .items import _tags


def shuffle_tags(caption: str, keep_tokens: int, trigger_word: str = "",
                 generator: torch.Generator | None = None) -> str:
    """Shuffle the comma-separated tags, keeping the first `keep_tokens` in place. A leading trigger word is
    always kept and counts as one of them."""
    tags = _tags(caption)
    keep = keep_tokens
    if trigger_word and tags and tags[0].lower() == trigger_word.strip().lower():
        keep = max(keep, 1)
    head, tail = tags[:keep], tags[keep:]
    order = torch.randperm(len(tail), generator=generator).tolist()
    return ", ".join(head + [tail[i] for i in order])


def jitter_ranges(cfg) -> tuple[float, float, float, float]:
    return (cfg.color_jitter_brightness, cfg.color_jitter_contrast, cfg.color_jitter_saturation,
            cfg.color_jitter_hue)


def color_jitter(img: Image.Image, brightness: float, contrast: float, saturation: float, hue: float,
                 generator: torch.Generator | None = None) -> Image.Image:
    """Brightness, contrast and saturation factors from [1-x, 1+x], a hue shift from [-hue, hue] turns,
    applied in that order to an RGB image. Draws come from `generator` (the global RNG when None)."""
    def draw(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    for amount, enhancer in ((brightness, ImageEnhance.Brightness), (contrast, ImageEnhance.Contrast),
                             (saturation, ImageEnhance.Color)):
        if amount:
            img = enhancer(img).enhance(draw(max(0.0, 1 - amount), 1 + amount))
    if hue:
        shift = draw(-hue, hue)
        hsv = np.asarray(img.convert("HSV")).copy()
        hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + round(shift * 255)) % 256).astype(np.uint8)
        img = Image.fromarray(hsv, "HSV").convert("RGB")
    return img
