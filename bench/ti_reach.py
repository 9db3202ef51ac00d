"""Textual inversion on the toy world (bench.quality calls this for a textual-inversion preset):

    python -m bench.ti_reach [--preset presets/toy-textual-inversion.toml] [--samples N] [--steps N] [--json]

An embedding only steers what the frozen UNet can already draw: builtin:toy has never drawn a star, so no
embedding reaches one. toy-textual-inversion trains `<subj>` on toy-subject (one red circle on white, which the
base draws when asked in words), and this judges, over `samples` images each:
- base_class_subject_rate: the base, the bare class prompt ("a circle"): how often it happens to be the subject
  (shape, colour and background as the classifier reads them);
- subject_rate: "a <subj>" with the learned embedding: how often it is the subject;
- subject_rate_strict: the same, with the pixel judge also finding a circle in the subject's colours;
- subject_iou: the mean IoU of those images with the ideal red circle on white at its best placement;
- train_seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"subject_rate_strict": 0.9}


def subject_figures(readings, suffix: str = "") -> dict[str, float]:
    """Shares of the readings that are toy-subject: classifier alone, and with the pixel judge."""
    from engine.builtin.toy import world

    s, n = world.SUBJECT, len(readings)
    looks = [all(r.classifier[k] == getattr(s, k) for k in ("shape", "colour", "background")) for r in readings]
    return {f"subject_rate{suffix}": sum(looks) / n,
            f"subject_rate_strict{suffix}": sum(ok and r.pixel.sees("shape", s.shape)
                                                for ok, r in zip(looks, readings)) / n,
            f"subject_iou{suffix}": sum(r.pixel.caption_iou for r in readings) / n}


def measure(preset: Path, samples: int, steps: int | None, train, log=print) -> dict:
    from diffusers import StableDiffusionPipeline

    from engine.builtin import resolve_builtin
    from engine.builtin.toy import JUDGE_FILE, world
    from engine.builtin.toy.judge import load_judge
    from engine.builtin.toy.scoring import read, sample
    from engine.config import load_config
    from engine.methods import get_method

    cfg = load_config(preset)
    base_dir = resolve_builtin(cfg.pretrained_model_name_or_path)
    judge = load_judge(base_dir / JUDGE_FILE)
    pipe = StableDiffusionPipeline.from_pretrained(base_dir)
    pipe.set_progress_bar_config(disable=True)
    scenes = [world.SUBJECT] * samples
    cls = f"a {cfg.initializer_token}"
    base = subject_figures(read(judge, sample(pipe, [cls] * samples, steps), scenes))
    result = {"base_class_subject_rate": base["subject_rate"], "base_class_subject_rate_strict":
              base["subject_rate_strict"]}
    with tempfile.TemporaryDirectory(prefix="bench-ti-") as tmp:
        run, seconds = train(preset, Path(tmp))
        log(f"trained {preset} in {seconds:.1f} s")
        get_method(cfg.method).load_into_pipeline(pipe, run, load_config(run / "config.toml"))
    result.update(subject_figures(read(judge, sample(pipe, [f"a {cfg.placeholder_token}"] * samples, steps),
                                       scenes)))
    result["train_seconds"] = round(seconds, 1)
    return {k: round(v, 4) for k, v in result.items()}


def verdict(r: dict) -> list[str]:
    missed = [f"{k} = {r[k]} (target >= {v})" for k, v in TARGETS.items() if r[k] < v]
    if r["subject_rate_strict"] <= r["base_class_subject_rate_strict"]:
        missed.append("the embedding draws the subject no more often than the bare class prompt does")
    return missed


def main(argv=None) -> int:
    from bench.quality import train

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", type=Path, default=ROOT / "presets" / "toy-textual-inversion.toml")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pipeline's 50)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    r = measure(args.preset, args.samples, args.steps, train)
    for k, v in r.items():
        print(f"{k:36s} {v}")
    missed = verdict(r)
    print("targets: " + ("all met" if not missed else "MISSED " + "; ".join(missed)))
    if args.json:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
