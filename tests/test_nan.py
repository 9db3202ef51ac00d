"""NaN is never saved as "good": not as a checkpoint, not as the adaptor (real divergences, through real training
subprocesses). That the hint after a NaN loss names a really finite checkpoint: test_run_folder.py."""
import re
from pathlib import Path

import pytest

from conftest import make_images, run_training, sets
from engine.events import read_events

pytestmark = pytest.mark.slow

# adam_epsilon = 0 makes Adam divide 0/0 on the LoRA down-weights at step 1 (the up-weights start at zero, so
# the down-weights' gradients are zero): the weights turn NaN while step 1's loss is still finite
DIVERGE = dict(resolution=64, learning_rate=1.0, adam_epsilon=0, max_grad_norm=0, lr_warmup_steps=0,
               report_to="none", seed=0)


def train(data: Path, out: Path, name: str, expect_rc: int, **kw):
    return run_training(sets(**kw, train_data_dir=data, output_dir=out, adaptor_name=name), expect_rc=expect_rc,
                        launch=False)


def test_nan_weights_are_not_saved_as_a_checkpoint(tmp_path):
    data = make_images(tmp_path / "data", n=2)
    p = train(data, tmp_path / "runs", "div", 1, **DIVERGE, max_train_steps=10, checkpointing_steps=1)
    run = tmp_path / "runs" / "div"
    err = read_events(run / "events.jsonl")[-1]
    assert err["type"] == "error" and err["hint"].startswith("lower learning_rate")
    assert re.search(r"the trained weights \([\d,]+ of [\d,]+ values, all in lora_A\) hold NaN or infinite values "
                     r"after step 1, so checkpoint-1 was not saved; no checkpoint with finite weights", err["message"])
    assert p.stderr.count("hold NaN") == 1 and "Traceback" not in p.stderr
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())
    assert not (run / "div.safetensors").exists()


def test_nan_weights_are_not_saved_as_the_adaptor(tmp_path):
    # one step: its loss is finite (the only loss check passes), the weights it leaves are not
    data = make_images(tmp_path / "data", n=2)
    train(data, tmp_path / "runs", "last", 1, **DIVERGE, max_train_steps=1)
    run = tmp_path / "runs" / "last"
    events = read_events(run / "events.jsonl")
    assert [e["type"] for e in events][-2:] == ["step", "error"] and events[-2]["loss"] == events[-2]["loss"]
    assert "so the adaptor was not saved" in events[-1]["message"]
    assert not (run / "last.safetensors").exists() and not (run / "diffusers").exists()
    assert not (run / "README.md").exists()
