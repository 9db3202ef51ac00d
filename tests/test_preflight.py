"""Pre-flight (engine/preflight.py) as `python -m engine.train --check` runs it: what would fail once a run
starts is named before anything starts, with exit code 2; a config that will run says "Ready"."""
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from engine.config import load_config
from ui.testing import free_port

TOY = ROOT / "presets" / "toy-lora.toml"


def check(*overrides, env=None):
    args = [a for o in overrides for a in ("--set", o)]
    return subprocess.run([sys.executable, "-m", "engine.train", str(TOY), "--check", *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, capture_output=True, text=True,
                          timeout=120)


def test_check_names_what_would_fail_and_exits_2(tmp_path):
    import torch
    cases = [(f"train_data_dir={tmp_path / 'missing'}", f"{tmp_path / 'missing'} does not exist"),
             ("pretrained_model_name_or_path=someone/sd-model", "'someone/sd-model' is a hub id not in the local")]
    if not torch.cuda.is_available():  # the run: 8-bit Adam passed Check and failed 38 s into the run
        cases += [("optimizer=adamw8bit", 'optimizer = "adamw8bit" needs a CUDA GPU'),
                  ("mixed_precision=fp16", 'mixed_precision = "fp16" needs a CUDA GPU')]
    p = check(*(override for override, _ in cases))  # one run: each problem is named on its own line
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-1500:]
    for override, needle in cases:
        assert needle in p.stderr, (override, p.stderr[-1500:])
    assert f"# Not ready: {len(cases)} problems would stop the run." in p.stdout
    p = check()
    assert p.returncode == 0, p.stderr[-1500:]
    assert "# Ready: 1000 steps, about " in p.stdout and 'pretrained_model_name_or_path = "builtin:toy"' in p.stdout


def test_disk_space_for_checkpoints_is_counted(tmp_path):
    from engine.preflight import preflight
    raw = {"pretrained_model_name_or_path": "builtin:toy", "train_data_dir": str(ROOT / "examples/datasets/toy-star"),
           "resolution": 64, "output_dir": str(tmp_path), "report_to": "none", "method": "full"}
    fine = preflight(load_config(base={**raw, "max_train_steps": 10, "checkpointing_steps": 5}))
    assert fine.ok, fine.problems
    assert 0 < fine.disk_bytes < 10 * 2**30  # two checkpoints and a pipeline of the toy model
    # a checkpoint every step for ten million steps fits on no disk
    full = preflight(load_config(base={**raw, "max_train_steps": 10_000_000, "checkpointing_steps": 1}))
    assert not full.ok
    assert [p.field for p in full.errors] == ["checkpointing_steps"]
    assert "10000000 checkpoints of about" in full.errors[0].message and "free" in full.errors[0].message


def test_an_unreachable_hub_fails_in_seconds_not_minutes(monkeypatch):
    from engine import hub
    from engine.preflight import preflight
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(hub.HubUnavailable, match="cannot reach 127.0.0.1"):
        hub.availability("someone/not-cached")
    assert time.monotonic() - t0 < hub.PROBE_TIMEOUT_S + 1
    cfg = load_config(TOY, [f"train_data_dir={ROOT / 'examples/datasets/toy-star'}",
                            "pretrained_vae_model_name_or_path=someone/a-vae"])
    assert [p.field for p in preflight(cfg).errors] == ["pretrained_vae_model_name_or_path"]
