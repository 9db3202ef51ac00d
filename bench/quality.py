"""Did the adaptor learn? Train a toy preset's LoRA (or take one), sample with fixed seeds, let the judge say.

    python -m bench.quality [--preset presets/toy-lora.toml] [--adaptor RUN_DIR] [--json]
                            [--samples 64] [--steps N]

Figures, all judged by builtin:toy's judge over `--samples` images (image i from seed i):
- base_concept_rate: the base model, prompts naming the concept ("a red star on ..."): fraction showing it;
- adaptor_concept_rate: the adaptor, the same prompts, no trigger word;
- adaptor_trigger_concept_rate: the adaptor, the same prompts with the trigger word;
- base_adherence / adaptor_adherence: ordinary world prompts, no trigger: shape and colour both right;
- train_seconds: wall time of the preset's `python -m engine.train` run (0 with --adaptor).
The concept (a shape such as star, or a fill such as striped) is read from the dataset's captions.
Sampling uses the pipeline's own sampler, 50 steps (the diffusers default) unless --steps, guidance 7.5.
With --json the last line is one JSON object with exactly those keys.
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
TARGETS = {"adaptor_trigger_concept_rate": (">=", 0.80), "base_concept_rate": ("<=", 0.10)}
ADHERENCE_TOLERANCE = 0.10


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


def measure(preset: Path, adaptor: Path | None, samples: int, steps: int | None, log=print) -> dict:
    from diffusers import StableDiffusionPipeline

    from engine.builtin import resolve_builtin
    from engine.builtin.toy import JUDGE_FILE
    from engine.builtin.toy.build import adherence, sample
    from engine.builtin.toy.judge import load_judge, predict
    from engine.config import load_config
    from engine.data import build_caption
    from engine.methods import get_method

    cfg = load_config(preset)
    captions = [p.read_text() for p in sorted((ROOT / cfg.train_data_dir).glob(f"*{cfg.caption_extension}"))]
    attribute, value = concept_of(captions)
    result: dict = {"train_seconds": 0.0}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        if adaptor is None:
            adaptor, result["train_seconds"] = train(preset, Path(tmp))
            log(f"trained {preset} in {result['train_seconds']:.1f} s")
        base_dir = resolve_builtin(cfg.pretrained_model_name_or_path)
        judge = load_judge(base_dir / JUDGE_FILE)
        pipe = StableDiffusionPipeline.from_pretrained(base_dir)
        pipe.set_progress_bar_config(disable=True)
        concept = [s.caption() for s in concept_scenes(attribute, value, samples)]

        def concept_rate(prompts):
            return sum(r[attribute] == value for r in predict(judge, sample(pipe, prompts, steps))) / samples

        result["base_concept_rate"] = concept_rate(concept)
        result["base_adherence"] = adherence(pipe, judge, samples, steps)["shape_and_colour"]
        get_method(cfg.method).load_into_pipeline(pipe, Path(adaptor), load_config(Path(adaptor) / "config.toml"))
        result["adaptor_concept_rate"] = concept_rate(concept)
        if cfg.method == "textual_inversion":  # the learned token takes the concept word's place
            triggered = [p.replace(f" {value} ", f" {cfg.placeholder_token} ") for p in concept]
        else:
            triggered = [build_caption(p, cfg.trigger_word) for p in concept]
        result["adaptor_trigger_concept_rate"] = concept_rate(triggered)
        result["adaptor_adherence"] = adherence(pipe, judge, samples, steps)["shape_and_colour"]
    return {k: round(result[k], 4) for k in KEYS}


def verdict(r: dict) -> list[str]:
    """Missed targets, in words (empty: all met)."""
    missed = [f"{k} = {r[k]} (target {op} {v})" for k, (op, v) in TARGETS.items()
              if not (r[k] >= v if op == ">=" else r[k] <= v)]
    if abs(r["adaptor_adherence"] - r["base_adherence"]) > ADHERENCE_TOLERANCE:
        missed.append(f"adaptor_adherence = {r['adaptor_adherence']} is not within {ADHERENCE_TOLERANCE} of "
                      f"base_adherence = {r['base_adherence']}")
    return missed


METHOD_PRESETS = {"lora": "toy-lora.toml", "dreambooth": "toy-dreambooth.toml",
                  "textual_inversion": "toy-textual-inversion.toml", "full": "toy-full.toml"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    p.add_argument("--preset", type=Path, default=None, help="a toy preset (default: presets/toy-lora.toml)")
    p.add_argument("--method", choices=sorted(METHOD_PRESETS), default=None,
                   help="the shipped toy preset of a method (dreambooth on toy-subject, the rest on toy-star)")
    p.add_argument("--adaptor", type=Path, default=None, help="a finished run folder (skips training)")
    p.add_argument("--samples", type=int, default=64, help="images per figure")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pipeline's 50)")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    args = p.parse_args(argv)
    if args.preset and args.method:
        p.error("give --preset or --method, not both")
    args.preset = args.preset or ROOT / "presets" / METHOD_PRESETS[args.method or "lora"]
    from engine.config import load_config

    if load_config(args.preset).method == "dreambooth":  # subject and class drift, with and without prior
        from bench.dreambooth_quality import measure as measure_dreambooth

        r = measure_dreambooth(args.preset, args.samples, args.steps, train)
        for k, v in r.items():
            print(f"{k:30s} {v}")
        if args.json:
            print(json.dumps(r))
        return 0
    r = measure(args.preset, args.adaptor, args.samples, args.steps)
    for k in KEYS:
        print(f"{k:30s} {r[k]}")
    missed = verdict(r)
    print("targets: " + ("all met" if not missed else "MISSED " + "; ".join(missed)))
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
