"""The validation loss, pushed into overfitting on purpose: does it fall, then rise? A plot and the figures.

    python -m bench.validation_overfit [--out docs/validation-loss-overfit.png] [--steps 120] [--every 10]
                                       [--train-images 4] [--held-out 8] [--lr 3e-4] [--json]

A full fine-tune of builtin:toy (UNet and text encoder) on a few toy-world stars, a high constant learning rate and
far too many steps for so few images, with the validation loss (engine/sampling/validation_loss.py) on other
stars held out (validation_data_dir) every `--every` steps. The base has never seen a star, so the held-out loss
first falls as the model learns the shape; then it memorises its few images and the held-out loss rises.
Figures: the loss at step 0, its lowest (and the step), at the end, and the rise from the lowest to the end as a
fraction of the lowest. The PNG is drawn with PIL: the loss against the step, the lowest point marked.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PRESET = """[model]
pretrained_model_name_or_path = "builtin:toy"
method = "full"
[dataset]
train_data_dir = "{train}"
validation_data_dir = "{held}"
resolution = 64
center_crop = true
cache_latents = true
[training]
train_batch_size = {batch}
max_train_steps = {steps}
learning_rate = {lr}
lr_scheduler = "constant"
lr_warmup_steps = 0
seed = 0
train_text_encoder = true
[validation]
validation_prompt = ""
validation_loss_steps = {every}
[output]
adaptor_name = "overfit"
report_to = "none"
"""


def run(steps: int, every: int, train_images: int, held_out: int, lr: float, log=print) -> list[tuple[int, float]]:
    """Train as above; the (step, validation loss) points."""
    from bench.quality import train
    from engine.builtin.toy import world
    from engine.events import read_events

    with tempfile.TemporaryDirectory(prefix="bench-overfit-") as tmp:
        tmp = Path(tmp)
        world.write_dataset(tmp / "train", world.scenes(train_images, seed=11, shapes=("star",)))
        world.write_dataset(tmp / "held", world.scenes(held_out, seed=12, shapes=("star",)))
        preset = tmp / "overfit.toml"
        preset.write_text(PRESET.format(train=tmp / "train", held=tmp / "held", batch=train_images, steps=steps,
                                        lr=lr, every=every))
        run_dir, seconds = train(preset, tmp / "runs")
        log(f"trained in {seconds:.0f} s")
        return [(e["step"], e["loss"]) for e in read_events(run_dir / "events.jsonl")
                if e["type"] == "validation_loss"]


def figures(points: list[tuple[int, float]]) -> dict:
    low_step, low = min(points, key=lambda p: p[1])
    first, last = points[0][1], points[-1][1]
    return {"first": round(first, 5), "lowest": round(low, 5), "lowest_step": low_step, "last": round(last, 5),
            "last_step": points[-1][0], "fall": round((first - low) / first, 4), "rise": round((last - low) / low, 4)}


def plot(points: list[tuple[int, float]], path: Path, title: str) -> None:
    """A line chart: step across, loss up, five ticks on each axis, the lowest point ringed."""
    from PIL import Image, ImageDraw

    w, h, left, right, top, bottom = 720, 420, 70, 20, 40, 50
    steps, losses = [p[0] for p in points], [p[1] for p in points]
    lo, hi = min(losses), max(losses)
    pad = (hi - lo) * 0.08 or hi * 0.1
    lo, hi = lo - pad, hi + pad
    last = max(steps) or 1

    def xy(step, loss):
        return (left + (w - left - right) * step / last, top + (h - top - bottom) * (hi - loss) / (hi - lo))

    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    d.text((left, 12), title, fill="black")
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(5):
        loss = lo + (hi - lo) * i / 4
        y = xy(0, loss)[1]
        d.line([left - 4, y, left, y], fill="black")
        d.text((4, y - 6), f"{loss:.4f}", fill="black")
        step = round(last * i / 4)
        x = xy(step, lo)[0]
        d.line([x, h - bottom, x, h - bottom + 4], fill="black")
        d.text((x - 10, h - bottom + 8), str(step), fill="black")
    d.text((w // 2 - 20, h - 20), "step", fill="black")
    d.line([xy(s, v) for s, v in points], fill=(30, 80, 200), width=2)
    for s, v in points:
        x, y = xy(s, v)
        d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(30, 80, 200))
    f = figures(points)
    x, y = xy(f["lowest_step"], f["lowest"])
    d.ellipse([x - 7, y - 7, x + 7, y + 7], outline=(200, 30, 30), width=2)
    d.text((x + 10, y + 4), f"lowest {f['lowest']:.4f} at step {f['lowest_step']}", fill=(200, 30, 30))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.validation_overfit", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "validation-loss-overfit.png")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--every", type=int, default=10, help="validation loss every N steps")
    p.add_argument("--train-images", type=int, default=4)
    p.add_argument("--held-out", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--json", action="store_true", help="end with one JSON line of the figures and points")
    args = p.parse_args(argv)
    points = run(args.steps, args.every, args.train_images, args.held_out, args.lr)
    f = figures(points)
    plot(points, args.out, f"validation loss, {args.held_out} held-out stars; full fine-tune of builtin:toy on "
                           f"{args.train_images} stars, lr {args.lr:g}")
    print(f"wrote {args.out}")
    for k, v in f.items():
        print(f"{k:12s} {v}")
    if args.json:
        print(json.dumps({**f, "points": points}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
