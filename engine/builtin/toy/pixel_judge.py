"""The pixel judge: how closely an image matches the exact picture of its caption, at the best placement.

The world can draw any caption exactly (world.render). For an image and the scene its prompt asked for, every
pixel is read as foreground or background by where its colour lies between the caption's two colours; that
mask is compared, by soft intersection over union, with the world's own coverage of every shape and fill at
every placement the search tries (all integer shifts of templates at half-pixel phases and radii 6-28 px, by
FFT cross-correlation). The best placement gives the shape and fill the image shows, how well (`iou`), and
how clean it is against the rendered ideal (`clean`). Specks, blobs and fringes match no shape well; a
drawn star matches the star template and nothing else as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from engine.builtin.toy import world

RADII = np.arange(6.0, 28.5, 1.0)  # the world draws 11-22 px; a model may draw a little smaller or larger
PHASES = ((0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.5, 0.5))  # centre offsets: with integer shifts, every half pixel
MARGIN = int(max(RADII)) + 1  # shifts move a template by at most this much
PAD = 96  # FFT size (2^5 x 3): >= SIZE + MARGIN, so a shift never wraps an image pixel onto another
# a pixel within this much (per channel, of 255) of the ideal counts as clean
CLEAN_TOLERANCE = 40
# the pixel judge calls a shape or fill seen when the best template is it and IoU reaches this (calibrated in
# bench/judge_calibration.py: rendered pictures after the VAE pass, a model's specks and blobs fail)
IOU_THRESHOLD = 0.7


@dataclass(frozen=True)
class Match:
    shape: str  # the best-matching shape and fill
    fill: str
    iou: float  # of that best match
    caption_iou: float  # of the best placement of the caption's own shape and fill
    clean: float  # share of pixels within CLEAN_TOLERANCE of the ideal at the best placement
    cx: float
    cy: float
    r: float

    def sees(self, attribute: str, value: str) -> bool:
        return getattr(self, attribute) == value and self.iou >= IOU_THRESHOLD


def _stripe_rows() -> np.ndarray:
    """1 on the pixel rows a striped fill colours (absolute rows, as world.coverage draws them)."""
    on = (np.arange(world.SIZE) // (world.STRIPE_PERIOD // 2)) % 2 == 0
    return np.repeat(on[:, None], world.SIZE, axis=1).astype(np.float32)


def _fft(a: torch.Tensor) -> torch.Tensor:
    return torch.fft.rfft2(a, s=(PAD, PAD))


def _correlate(a_fft: torch.Tensor, t_fft: torch.Tensor) -> torch.Tensor:
    """c[dy, dx] = sum_q a(q + d) t(q), shifts d taken modulo PAD (negative shifts at the end)."""
    return torch.fft.irfft2(a_fft * t_fft.conj(), s=(PAD, PAD))


def _shift(i: int) -> int:
    return i - PAD if i > PAD // 2 else i


@lru_cache(maxsize=1)
def _bank():
    """Every shape's templates centred near the image centre, [K, ...]: their FFTs, their squared sums as
    drawn solid and (per shift: the stripes are fixed rows) striped, where a shift keeps the template
    wholly inside the image (as the world draws), and (shape, radius, phase) of each."""
    params = [(shape, float(r), p) for shape in world.SHAPES for r in RADII for p in PHASES]
    masks = torch.from_numpy(np.stack([
        world.coverage(world.Scene(shape, "red", "white", cx=world.SIZE / 2 + p[0], cy=world.SIZE / 2 + p[1], r=r))
        for shape, r, p in params]))
    t_fft = _fft(masks)
    solid_sq = (masks**2).sum(dim=(1, 2))[:, None, None]
    striped_sq = _correlate(_fft(torch.from_numpy(_stripe_rows())), _fft(masks**2))
    shifts = np.array([_shift(i) for i in range(PAD)])
    valid = np.zeros((len(params), PAD, PAD), dtype=bool)
    for k, (_, r, (px, py)) in enumerate(params):
        cx, cy = world.SIZE / 2 + px + shifts, world.SIZE / 2 + py + shifts
        okx, oky = (cx - r >= 0) & (cx + r <= world.SIZE), (cy - r >= 0) & (cy + r <= world.SIZE)
        valid[k] = oky[:, None] & okx[None, :]
    return t_fft, solid_sq, striped_sq, torch.from_numpy(valid), params


def foreground(image: np.ndarray, colour: str, background: str) -> np.ndarray:
    """How far each pixel's colour lies from the background towards the foreground colour, in [0, 1]."""
    fg = np.asarray(world.COLOURS[colour], np.float32)
    bg = np.asarray(world.BACKGROUNDS[background], np.float32)
    d = fg - bg
    return np.clip((image.astype(np.float32) - bg) @ d / float(d @ d), 0.0, 1.0)


@torch.no_grad()
def match(image, scene: world.Scene) -> Match:
    """The best placement of every shape and fill against `image` (PIL or uint8 HxWx3, resized to 64 px),
    read with the colours of `scene` (what the prompt asked for)."""
    if not isinstance(image, np.ndarray):
        image = np.asarray(image.convert("RGB").resize((world.SIZE, world.SIZE)))
    a = torch.from_numpy(foreground(image, scene.colour, scene.background))
    t_fft, solid_sq, striped_sq, valid, params = _bank()
    a_sq = float((a**2).sum())
    found = {}  # (shape, fill) -> (iou, template index, dy, dx)
    for fill, a_fill, b_sq in (("solid", a, solid_sq), ("striped", a * torch.from_numpy(_stripe_rows()), striped_sq)):
        # soft Dice 2ab / (a^2 + b^2), then as IoU (D / (2 - D)): for 0/1 masks exactly their IoU, and 1 for an
        # image that is the template, anti-aliased edges and all
        dice = 2 * _correlate(_fft(a_fill), t_fft) / (a_sq + b_sq).clamp_min(1e-6)
        iou = torch.where(valid, dice / (2 - dice), torch.full_like(dice, -1.0))
        per_template = iou.flatten(1).max(dim=1)
        for shape in world.SHAPES:
            ks = [k for k, p in enumerate(params) if p[0] == shape]
            k = ks[int(per_template.values[ks].argmax())]
            dy, dx = np.unravel_index(int(per_template.indices[k]), (PAD, PAD))
            found[(shape, fill)] = (float(per_template.values[k]), k, _shift(int(dy)), _shift(int(dx)))
    (shape, fill), (iou, k, dy, dx) = max(found.items(), key=lambda kv: kv[1][0])
    _, r, (px, py) = params[k]
    best = world.Scene(shape, scene.colour, scene.background, fill, cx=world.SIZE / 2 + px + dx,
                       cy=world.SIZE / 2 + py + dy, r=r)
    err = np.abs(image.astype(np.int16) - world.render(best).astype(np.int16)).max(axis=2)
    return Match(shape=shape, fill=fill, iou=round(iou, 4),
                 caption_iou=round(found[(scene.shape, scene.fill)][0], 4),
                 clean=round(float((err <= CLEAN_TOLERANCE).mean()), 4), cx=best.cx, cy=best.cy, r=r)


def match_all(images, scenes) -> list[Match]:
    return [match(im, s) for im, s in zip(images, scenes)]
