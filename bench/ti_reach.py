"""Textual inversion's control on the toy world: `python -m bench.ti_reach [--samples N]`.

An embedding only steers what the frozen UNet can already draw. builtin:toy has never drawn a star, so
`bench.quality --method textual_inversion` (toy-star) is near zero; this trains the same preset on
toy-subject (one red circle on white, which the base can draw) as `<subj>`, initialised from "circle", and
judges how often "a <subj>" gives that circle, against "a circle".
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20, help="sampling steps")
    args = ap.parse_args(argv)
    from diffusers import StableDiffusionPipeline

    from engine.builtin import resolve_builtin
    from engine.builtin.toy import JUDGE_FILE, world
    from engine.builtin.toy.build import sample
    from engine.builtin.toy.judge import load_judge, predict
    from engine.config import load_config
    from engine.methods import get_method

    with tempfile.TemporaryDirectory(prefix="bench-ti-") as tmp:
        started = time.time()
        sets = {"output_dir": tmp, "train_data_dir": "examples/datasets/toy-subject", "placeholder_token": "<subj>",
                "initializer_token": "circle", "num_validation_images": 0, "adaptor_name": "ti"}
        cmd = [sys.executable, "-m", "engine.train", str(ROOT / "presets" / "toy-textual-inversion.toml")]
        for key, value in sets.items():
            cmd += ["--set", f"{key}={value}"]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        seconds = time.time() - started
        base = resolve_builtin("builtin:toy")
        judge = load_judge(base / JUDGE_FILE)
        pipe = StableDiffusionPipeline.from_pretrained(base)
        pipe.set_progress_bar_config(disable=True)
        run = Path(tmp) / "ti"
        get_method("textual_inversion").load_into_pipeline(pipe, run, load_config(run / "config.toml"))
        s = world.SUBJECT
        for prompt in ("a <subj>", "a circle"):
            got = predict(judge, sample(pipe, [prompt] * args.samples, args.steps))
            rate = sum(g["shape"] == s.shape and g["colour"] == s.colour and g["background"] == s.background
                       for g in got) / args.samples
            print(f"{prompt!r}: draws the subject (red circle on white) {rate:.3f}")
    print(f"trained in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
