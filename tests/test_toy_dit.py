"""The build of builtin:toy-dit, the toy world's small Flux.1 trained from scratch by flow matching
(engine/builtin/toy/dit_build.py)."""
import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from engine.builtin.toy import JUDGE_FILE, REPORT_FILE


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
