"""Calibrate the pixel judge's IoU threshold: `python -m bench.judge_calibration [--n 200] [--model DIR] [--json]`.

Positives: stars (solid and striped) and striped shapes drawn by the world, then through builtin:toy's VAE
and the classifier's training blur/noise (what a model that has learned the concept produces). Negatives: the
other shapes through the same pass, and speckled images (the prompt's colour scattered over its background in
specks, as an adaptor that broke the base draws). For each threshold: the share of each set the pixel judge
calls the concept. Also, for reference, rounded stars (blurred 9 px: the large ones keep their points and read
as stars, as they do to a person; the small ones become round blobs and read as circles).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

THRESHOLDS = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85)


def through_vae(vae, images: list[np.ndarray], seed: int) -> list[np.ndarray]:
    import torch

    from engine.builtin.toy.judge import _degrade, _round_trip
    from engine.builtin.toy.vae import to_tensor

    torch.manual_seed(seed)
    x = torch.cat([_round_trip(vae, to_tensor(images[i:i + 64])) for i in range(0, len(images), 64)])
    x = _degrade(x, torch.Generator().manual_seed(seed))
    return [((t.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy() for t in x]


def specks(scene, rng: np.random.Generator) -> np.ndarray:
    """The scene's background with 20-80 specks of 1-3 px, mostly its colour, some of another."""
    from engine.builtin.toy import world

    img = np.empty((world.SIZE, world.SIZE, 3), np.uint8)
    img[:] = world.BACKGROUNDS[scene.background]
    yy, xx = np.mgrid[:world.SIZE, :world.SIZE]
    for _ in range(int(rng.integers(20, 80))):
        cy, cx, r = rng.uniform(4, world.SIZE - 4, 2).tolist() + [rng.uniform(1, 3)]
        colour = scene.colour if rng.random() < 0.7 else str(rng.choice(list(world.COLOURS)))
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = world.COLOURS[colour]
    return img


def rounded(scene) -> np.ndarray:
    """The scene drawn, then box-blurred (9 px) and hardened a little: its corners and points rounded off."""
    from engine.builtin.toy import world

    m = world.coverage(scene)
    k = 9
    padded = np.pad(m, k // 2, mode="edge")
    c = np.cumsum(np.cumsum(padded, 0), 1)
    c = np.pad(c, ((1, 0), (1, 0)))
    soft = (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)
    return world.render(scene, np.clip((soft - 0.3) / 0.4, 0, 1))


def calibrate(n: int, model: Path) -> dict:
    from diffusers import AutoencoderKL

    from engine.builtin.toy import world
    from engine.builtin.toy.pixel_judge import match

    vae = AutoencoderKL.from_pretrained(model, subfolder="vae")

    rng = np.random.default_rng(5)
    stars = world.scenes(n, seed=51, shapes=("star",))
    striped = world.scenes(n, seed=52, fills=("striped",))
    others = world.scenes(n, seed=53)  # solid base shapes
    sets = {  # name -> (images, scenes judged as, attribute, value)
        "stars": (through_vae(vae, [world.render(s) for s in stars], 1), stars, "shape", "star"),
        "striped": (through_vae(vae, [world.render(s) for s in striped], 2), striped, "fill", "striped"),
        "other_shapes_as_star": (through_vae(vae, [world.render(s) for s in others], 3),
                                 [dataclasses.replace(s, shape="star") for s in others], "shape", "star"),
        "solid_as_striped": (through_vae(vae, [world.render(s) for s in others], 3),
                             [dataclasses.replace(s, fill="striped") for s in others], "fill", "striped"),
        "specks_as_star": ([specks(s, rng) for s in stars], stars, "shape", "star"),
        "specks_as_striped": ([specks(s, rng) for s in striped], striped, "fill", "striped"),
        "rounded_stars": ([rounded(s) for s in stars], stars, "shape", "star"),
    }
    out = {}
    for name, (images, scenes, attribute, value) in sets.items():
        matches = [match(im, s) for im, s in zip(images, scenes)]
        best = [getattr(m, attribute) == value for m in matches]
        out[name] = {"best_match_is_it": round(float(np.mean(best)), 4),
                     "iou_percentiles_1_5_50_95": [round(float(v), 3) for v in
                                                   np.percentile([m.iou for m in matches], [1, 5, 50, 95])],
                     **{f"called_at_{t}": round(float(np.mean([b and m.iou >= t for b, m in zip(best, matches)])), 4)
                        for t in THRESHOLDS}}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="images per set")
    ap.add_argument("--model", type=Path, default=None, help="a toy pipeline folder (default: builtin:toy)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    from engine.builtin.toy import SHIPPED

    r = calibrate(args.n, args.model or SHIPPED)
    for name, figures in r.items():
        print(f"{name:24s} " + " ".join(f"{k}={v}" for k, v in figures.items()))
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
