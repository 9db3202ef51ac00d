"""Did the adaptor learn? Train a toy preset's LoRA (or take one), sample with fixed seeds, let both judges say.

    python -m bench.quality [--preset presets/toy-lora.toml] [--adaptor RUN_DIR] [--json]
                            [--samples 64] [--steps N] [--examples PNG]

Figures over `--samples` images each (image i from seed i). The classifier's (builtin:toy's judge):
- base_concept_rate: the base model, prompts naming the concept ("a red star on ..."): fraction showing it;
- adaptor_concept_rate: the adaptor, the same prompts, no trigger word;
- adaptor_trigger_concept_rate: the adaptor, the same prompts with the trigger word;
- base_adherence / adaptor_adherence: ordinary world prompts, no trigger: shape and colour both right;
- train_seconds: wall time of the preset's `python -m engine.train` run (0 with --adaptor).
The pixel judge's (engine/builtin/toy/pixel_judge.py: the image against the world's exact picture of its
prompt, at the best placement), and the strict judge's (classifier and pixel judge both):
- base_/adaptor_/adaptor_trigger_concept_rate_pixel and ..._strict: the three concept rates again;
- adaptor_trigger_iou: the trigger images' mean IoU with the prompt's ideal at its best placement;
- base_/adaptor_colour, base_/adaptor_background: ordinary prompts: colour, background right (classifier);
- base_/adaptor_adherence_strict: ordinary prompts: shape (both judges), colour and background right.
The concept (a shape such as star, or a fill such as striped) is read from the dataset's captions.
Sampling uses the pipeline's own sampler and default steps unless --steps: builtin:toy's DPM-Solver++, 50 steps,
guidance 7.5; builtin:toy-dit's flow-matching Euler, 28 steps, true CFG against the empty prompt (toy/dit_arch.py).
With --json the last line is one JSON object with exactly those keys. --examples writes a PNG of 16 trigger
and base images the strict judge calls the concept and 16 it does not, for checking it by eye.
A DreamBooth preset is judged by bench/dreambooth_quality.py, a textual-inversion one by bench/ti_reach.py.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

KEYS = ("base_concept_rate", "adaptor_concept_rate", "adaptor_trigger_concept_rate", "base_adherence",
        "adaptor_adherence", "train_seconds")
JUDGED = ("base", "adaptor", "adaptor_trigger")
STRICT_KEYS = (*(f"{k}_concept_rate_{j}" for j in ("pixel", "strict") for k in JUDGED), "adaptor_trigger_iou",
               "base_colour", "adaptor_colour", "base_background", "adaptor_background", "base_adherence_strict",
               "adaptor_adherence_strict")
TARGETS = {"adaptor_trigger_concept_rate_strict": (">=", 0.90), "base_concept_rate_strict": ("<=", 0.05),
           "base_concept_rate": ("<=", 0.05)}
# prompts without the trigger keep the base's colours and backgrounds within this
ADHERENCE_TOLERANCE = 0.05


def concept_of(captions: list[str]) -> tuple[str, str]:
    """(attribute, value) of the new concept the captions teach, e.g. ("shape", "star")."""
    from engine.builtin.toy import world

    words = {w for c in captions for w in c.replace(",", " ").split()}
    if world.NEW_SHAPE in words:
        return "shape", world.NEW_SHAPE
    if world.NEW_FILL in words:
        return "fill", world.NEW_FILL
    raise SystemExit(f"the dataset's captions name no concept the judge knows ({world.NEW_SHAPE!r} or "
                     f"{world.NEW_FILL!r}); bench.quality measures the toy presets")


def concept_scenes(attribute: str, value: str, n: int):
    """Prompts naming the concept, with every colour (and, for a fill, every base shape) equally often."""
    import numpy as np

    from engine.builtin.toy import world

    rng = np.random.default_rng(4242)
    colours = list(world.COLOURS)
    out = []
    for i in range(n):
        shape = value if attribute == "shape" else world.BASE_SHAPES[(i // len(colours)) % len(world.BASE_SHAPES)]
        out.append(world.Scene(shape=shape, colour=colours[i % len(colours)],
                               background=str(rng.choice(list(world.BACKGROUNDS))),
                               fill=value if attribute == "fill" else "solid"))
    return out


def train(preset: Path, out_dir: Path, overrides: list[str] = ()) -> tuple[Path, float]:
    """One real `python -m engine.train` run of the preset; returns (run folder, wall seconds)."""
    from engine.config import load_config
    from engine.loop import run_dir_for

    cmd = [sys.executable, "-m", "engine.train", str(preset), "--set", f"output_dir={out_dir}",
           "--set", "overwrite=true", "--set", "report_to=none", "--set", "num_validation_images=0"]
    for item in overrides:
        cmd += ["--set", item]
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT)
    seconds = time.time() - started
    if proc.returncode != 0:
        raise SystemExit(f"training {preset} failed (exit {proc.returncode})")
    cfg = load_config(preset, [f"output_dir={out_dir}"])
    return run_dir_for(cfg), seconds


def concept_figures(readings, attribute: str, value: str) -> dict[str, float]:
    """The share of images showing the concept: to the classifier, the pixel judge, and both."""
    n = len(readings)
    return {"": sum(r.classifier[attribute] == value for r in readings) / n,
            "_pixel": sum(r.pixel.sees(attribute, value) for r in readings) / n,
            "_strict": sum(r.sees(attribute, value) for r in readings) / n}


def measure(preset: Path, adaptor: Path | None, samples: int, steps: int | None, examples: Path | None = None,
            log=print) -> dict:
    from diffusers import DiffusionPipeline

    from engine.builtin import resolve_builtin
    from engine.builtin.toy import JUDGE_FILE
    from engine.builtin.toy.judge import load_judge
    from engine.builtin.toy.scoring import adherence, read, sample
    from engine.config import load_config
    from engine.data import build_caption
    from engine.methods import get_method

    cfg = load_config(preset)
    captions = [p.read_text() for p in sorted((ROOT / cfg.train_data_dir).glob(f"*{cfg.caption_extension}"))]
    attribute, value = concept_of(captions)
    result: dict = {"train_seconds": 0.0}
    shown: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        if adaptor is None:
            adaptor, result["train_seconds"] = train(preset, Path(tmp))
            log(f"trained {preset} in {result['train_seconds']:.1f} s")
        base_dir = resolve_builtin(cfg.pretrained_model_name_or_path)
        judge = load_judge(base_dir / JUDGE_FILE)
        pipe = DiffusionPipeline.from_pretrained(base_dir)  # the base's class: builtin:toy SD, builtin:toy-dit Flux
        pipe.set_progress_bar_config(disable=True)
        scenes = concept_scenes(attribute, value, samples)
        concept = [s.caption() for s in scenes]

        def judge_concept(name: str, prompts: list[str]) -> None:
            images = sample(pipe, prompts, steps)
            readings = read(judge, images, scenes)
            shown[name] = list(zip(images, readings))
            for suffix, rate in concept_figures(readings, attribute, value).items():
                result[f"{name}_concept_rate{suffix}"] = rate
            if name == "adaptor_trigger":
                result["adaptor_trigger_iou"] = sum(r.pixel.caption_iou for r in readings) / len(readings)

        def judge_adherence(name: str) -> None:
            got = adherence(pipe, judge, samples, steps)
            result[f"{name}_adherence"], result[f"{name}_adherence_strict"] = got["shape_and_colour"], got["strict"]
            result[f"{name}_colour"], result[f"{name}_background"] = got["colour"], got["background"]

        judge_concept("base", concept)
        judge_adherence("base")
        get_method(cfg.method).load_into_pipeline(pipe, Path(adaptor), load_config(Path(adaptor) / "config.toml"))
        judge_concept("adaptor", concept)
        judge_concept("adaptor_trigger", [build_caption(p, cfg.trigger_word) for p in concept])
        judge_adherence("adaptor")
    if examples:
        write_examples(examples, shown["adaptor_trigger"] + shown["base"], attribute, value)
        log(f"wrote {examples}")
    return {k: round(result[k], 4) for k in KEYS + STRICT_KEYS}


def write_examples(path: Path, shown: list, attribute: str, value: str, n: int = 16) -> None:
    """A PNG: n images the strict judge calls the concept (top), n it does not (bottom; those the classifier
    alone would have called it first), each with the pixel judge's IoU for the prompt's own shape."""
    from PIL import Image, ImageDraw

    called = [(im, r) for im, r in shown if r.sees(attribute, value)][:n]
    refused = sorted([(im, r) for im, r in shown if not r.sees(attribute, value)],
                     key=lambda x: x[1].classifier[attribute] != value)[:n]
    tile, cols = 96, 8
    rows = [called[i:i + cols] for i in range(0, len(called), cols)]
    rows += [refused[i:i + cols] for i in range(0, len(refused), cols)]
    sheet = Image.new("RGB", (cols * tile, 24 + len(rows) * (tile + 14) + 24), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 6), f"called {value} by both judges ({len(called)})", fill="black")
    y = 24
    for i, row in enumerate(rows):
        if i == (len(called) + cols - 1) // cols:
            draw.text((4, y + 6), f"not called {value} (first: the classifier alone would have)", fill="black")
            y += 24
        for j, (im, r) in enumerate(row):
            sheet.paste(im.resize((tile, tile), Image.NEAREST), (j * tile, y))
            draw.text((j * tile + 2, y + tile), f"{r.classifier[attribute][:6]} iou {r.pixel.caption_iou:.2f}",
                      fill="black")
        y += tile + 14
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def verdict(r: dict) -> list[str]:
    """Missed targets, in words (empty: all met)."""
    missed = [f"{k} = {r[k]} (target {op} {v})" for k, (op, v) in TARGETS.items()
              if not (r[k] >= v if op == ">=" else r[k] <= v)]
    for k in ("colour", "background"):
        if abs(r[f"adaptor_{k}"] - r[f"base_{k}"]) > ADHERENCE_TOLERANCE:
            missed.append(f"adaptor_{k} = {r[f'adaptor_{k}']} is not within {ADHERENCE_TOLERANCE} of "
                          f"base_{k} = {r[f'base_{k}']}")
    return missed


METHOD_PRESETS = {"lora": "toy-lora.toml", "dreambooth": "toy-dreambooth.toml",
                  "textual_inversion": "toy-textual-inversion.toml", "full": "toy-full.toml"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    p.add_argument("--preset", type=Path, default=None, help="a toy preset (default: presets/toy-lora.toml)")
    p.add_argument("--method", choices=sorted(METHOD_PRESETS), default=None,
                   help="the shipped toy preset of a method (dreambooth and textual_inversion on toy-subject, "
                        "the rest on toy-star)")
    p.add_argument("--adaptor", type=Path, default=None, help="a finished run folder (skips training)")
    p.add_argument("--samples", type=int, default=64, help="images per figure")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pipeline's 50)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    p.add_argument("--examples", type=Path, default=None,
                   help="write a PNG of 16 images the strict judge calls the concept and 16 it does not")
    args = p.parse_args(argv)
    if args.preset and args.method:
        p.error("give --preset or --method, not both")
    args.preset = args.preset or ROOT / "presets" / METHOD_PRESETS[args.method or "lora"]
    from engine.config import load_config

    method = load_config(args.preset).method
    if method in ("dreambooth", "textual_inversion"):  # a subject: its own figures (see those modules)
        if method == "dreambooth":
            import bench.dreambooth_quality as subject_bench
        else:
            import bench.ti_reach as subject_bench
        r = subject_bench.measure(args.preset, args.samples, args.steps, train)
        keys, missed = list(r), subject_bench.verdict(r)
    else:
        r = measure(args.preset, args.adaptor, args.samples, args.steps, args.examples)
        keys, missed = KEYS + STRICT_KEYS, verdict(r)
    for k in keys:
        print(f"{k:36s} {r[k]}")
    print("targets: " + ("all met" if not missed else "MISSED " + "; ".join(missed)))
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
