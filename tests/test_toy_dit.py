"""The build of builtin:toy-dit, the toy world's small Flux.1 trained from scratch by flow matching
(engine/builtin/toy/dit_build.py)."""
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from engine.builtin import resolve_builtin
from engine.builtin.toy import JUDGE_FILE, REPORT_FILE, SHIPPED_DIT


def test_builtin_toy_dit_loads_offline_and_draws_the_shapes_it_is_asked_for():
    """The committed builtin:toy-dit: plain FluxPipeline loads it, it stays under 25 MB, its build report says it
    learned the world (shape far above chance 0.25), and it does so here too: 8 held-out prompts, two of each
    shape, with the shipped sampler and settings, read by the toy judge."""
    from diffusers import FluxPipeline

    from engine.builtin.toy import world
    from engine.builtin.toy.judge import load_judge, predict
    from engine.builtin.toy.scoring import sample

    folder = resolve_builtin("builtin:toy-dit")
    assert folder == SHIPPED_DIT
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size <= 25 * 2**20, size
    report = json.loads((folder / REPORT_FILE).read_text())
    assert report["quality"]["shape"] >= 0.9 and report["quality"]["colour"] >= 0.9, report["quality"]
    assert sum(report["stage_cpu_seconds"].get(k, 0) for k in ("train", "train2", "train3")) <= 30 * 60 * 2
    pipe = FluxPipeline.from_pretrained(folder, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    scenes = [world.Scene(shape=s, colour=c, background=b) for s, c, b in zip(
        [s for s in world.BASE_SHAPES for _ in (0, 1)], ["red", "blue", "green", "yellow", "purple", "orange",
                                                         "red", "blue"], ["white", "black", "gray", "pink"] * 2)]
    images = sample(pipe, [s.caption() for s in scenes], seed=1000)
    assert all(im.size == (64, 64) for im in images)
    read = predict(load_judge(folder / JUDGE_FILE), images)
    shapes = sum(r["shape"] == s.shape for r, s in zip(read, scenes))
    assert shapes >= 7 and sum(r["colour"] == s.colour for r, s in zip(read, scenes)) >= 7, read


@pytest.mark.slow
def test_the_dit_build_runs_every_stage_is_deterministic_and_resumes(tmp_path):
    """`python -m engine.builtin.toy build-dit` end to end at smoke size: a second build from nothing writes the same
    weights; --resume reuses the finished stages; the result loads with plain FluxPipeline."""
    from diffusers import FluxPipeline

    def build(name: str, *extra: str):
        cmd = [sys.executable, "-m", "engine.builtin.toy", "build-dit", "--smoke", "--out", str(tmp_path / name),
               "--work", str(tmp_path / f"{name}-work"), *extra]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)

    first, second = build("model"), build("model-2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    weights = sorted(p.relative_to(tmp_path / "model") for p in (tmp_path / "model").rglob("*.safetensors"))
    # the transformer, both text encoders, the VAE, the judge
    assert {p.parts[0] for p in weights} == {"transformer", "text_encoder", "text_encoder_2", "vae", JUDGE_FILE}
    for rel in weights:
        assert (tmp_path / "model" / rel).read_bytes() == (tmp_path / "model-2" / rel).read_bytes(), rel
    pipe = FluxPipeline.from_pretrained(tmp_path / "model", local_files_only=True)
    assert not pipe.transformer.config.guidance_embeds and pipe.transformer.config.in_channels == 16
    assert pipe.vae_scale_factor == 4 and pipe.vae.config.shift_factor == 0.0
    report = json.loads((tmp_path / "model" / REPORT_FILE).read_text())
    stages = {"data", "train", "train2", "quality"}
    assert set(report["stage_seconds"]) == set(report["stage_cpu_seconds"]) == stages
    assert set(report["quality"]) >= {"shape", "colour", "background"} and set(report["chance"]) == {
        "shape", "colour", "background"}
    again = build("model", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing the finished stage") == 3  # all but the quality check
    # the second stage reads the first stage's cached latents (every stage names the initial VAE)
    encoded = re.findall(r"latent cache: (\d+) latents encoded", first.stdout + first.stderr)
    assert len(encoded) == 2 and encoded[1] == "0", encoded
