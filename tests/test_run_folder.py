"""The run folder as a set (engine/run_files.py), through real training subprocesses: what a run writes gets
ordinary permissions, a killed write's temps are cleaned at the next start or resume, a killed overwrite gives the
earlier run back, and only a checkpoint with finite weights is called good. The tests share one finished run and
each works on its own copy."""
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import ROOT, make_images, run_training, sets
from engine.events import read_events

pytestmark = pytest.mark.slow

COMMON = dict(resolution=64, rank=4, learning_rate=1e-3, lr_warmup_steps=0, seed=0, report_to="none",
              checkpointing_steps=1, adaptor_name="r")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(data, run folder) of a finished run (checkpoints 1 and 2, a sample) trained under umask 027."""
    root = tmp_path_factory.mktemp("finished")
    data = make_images(root / "data", n=2)
    old = os.umask(0o027)  # the training process inherits it
    try:
        run_training(sets(**COMMON, train_data_dir=data, output_dir=root / "runs", max_train_steps=3,
                          validation_prompt="a red square", num_validation_images=1, num_inference_steps=2),
                     launch=False)
    finally:
        os.umask(old)
    return data, root / "runs" / "r"


def copy_of(finished, tmp_path) -> tuple[dict, Path]:
    """Training arguments for a copy of the finished run, and its folder."""
    data, run = finished
    shutil.copytree(run, tmp_path / "runs" / "r", symlinks=True)
    return dict(COMMON, train_data_dir=data, output_dir=tmp_path / "runs"), tmp_path / "runs" / "r"


def files_of(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def plant_leftovers(run: Path) -> list[Path]:
    """What a process killed mid-write leaves, named as the writers name their temps."""
    left = [run / ".r.safetensors.1a2b3c4d.tmp",  # killed during the final write
            run / ".tmp-outputs-5e6f7a8b" / "r.safetensors",
            run / "checkpoints" / ".tmp-checkpoint-7" / "optimizer.bin",  # killed during a checkpoint save
            run / "diffusers" / ".pytorch_lora_weights.safetensors.9c0d1e2f.tmp"]
    for p in left:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    return left


def test_what_a_run_writes_has_ordinary_permissions(finished):
    _, run = finished
    modes = {str(p.relative_to(run)): stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*")}
    assert {"r.safetensors", "diffusers/pytorch_lora_weights.safetensors", "README.md", "config.toml",
            "events.jsonl", "checkpoints/checkpoint-1/trained_state.safetensors"} <= set(modes)
    assert any(name.startswith("samples/") for name in modes)
    wrong = {name: oct(m) for name, m in modes.items() if m != (0o750 if (run / name).is_dir() else 0o640)}
    assert not wrong, wrong


def test_temporaries_of_a_killed_write_are_removed_on_resume(finished, tmp_path):
    args, run = copy_of(finished, tmp_path)
    left = plant_leftovers(run)
    run_training(sets(**args, max_train_steps=4, resume_from_checkpoint="latest"), launch=False)
    assert not [p for p in left if p.exists()]
    assert read_events(run / "events.jsonl")[-1]["type"] == "done"
    assert not [p for p in run.rglob("*") if p.name.startswith(".")]


def test_a_killed_overwrite_gives_the_earlier_run_back(finished, tmp_path):
    args, run = copy_of(finished, tmp_path)
    before = files_of(run)

    # an overwrite killed (SIGKILL: no cleanup of its own) while it trains, before its first checkpoint
    no_checkpoints = {k: v for k, v in args.items() if k != "checkpointing_steps"}
    cmd = [sys.executable, "-m", "engine.train", *sets(**no_checkpoints, max_train_steps=100_000, overwrite=True)]
    launched = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not any(e["type"] == "step" and e["time"] > launched for e in read_events(run / "events.jsonl")):
            assert proc.poll() is None and time.time() < deadline, "the overwrite did not start training"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    left = plant_leftovers(run)

    # the next start settles it: temps gone, the earlier run whole again, and not replaced by accident
    p = run_training(sets(**args, max_train_steps=2), expect_rc=2, launch=False)
    assert "already exists" in p.stderr
    assert not [p for p in left if p.exists()]
    assert files_of(run) == before


def test_the_hint_after_a_nan_loss_skips_a_checkpoint_holding_nan(finished, tmp_path):
    """A checkpoint an older version saved with NaN weights (no `finite` mark) is not named as the good one."""
    args, run = copy_of(finished, tmp_path)
    ckpts = run / "checkpoints"
    for folder in ckpts.iterdir():  # as the version before the check wrote them
        progress = json.loads((folder / "progress.json").read_text())
        progress.pop("finite", None)
        (folder / "progress.json").write_text(json.dumps(progress))
    state = load_file(str(ckpts / "checkpoint-2" / "trained_state.safetensors"))
    state = {k: torch.full_like(v, float("nan")) if "lora_A" in k else v for k, v in state.items()}
    save_file(state, str(ckpts / "checkpoint-2" / "trained_state.safetensors"))

    run_training(sets(**args, max_train_steps=4, resume_from_checkpoint="latest"), expect_rc=1, launch=False)
    err = read_events(run / "events.jsonl")[-1]
    good = ckpts / "checkpoint-1"
    assert err["type"] == "error" and "loss became nan at step 3" in err["message"]
    assert f"the last good checkpoint is {good} (resume_from_checkpoint = \"{good}\")" in err["message"]
