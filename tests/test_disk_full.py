"""A full disk, for real: training into a small tmpfs filled to a chosen free space. Every case must end with a
message naming the path and how much to free, a non-zero exit, no traceback, no temporaries, and an earlier
run's files untouched."""
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import make_images, run_training, sets
from engine.events import read_events

pytestmark = pytest.mark.slow

COMMON = dict(resolution=64, rank=4, learning_rate=1e-3, lr_warmup_steps=0, seed=0, report_to="none",
              max_train_steps=2)
# the tiny SD's rank-4 LoRA: ~70 KB a copy; a checkpoint (state, optimizer, both formats) ~410 KB
FULL = re.compile(r"no space left on device while writing (\S+); free (\d+) MB")


@pytest.fixture
def disk(tmp_path):
    """An 8 MB tmpfs (root can mount one; skipped where that is not allowed), unmounted even if the test fails."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip() or p.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def leave_free(disk: Path, free: int) -> Path:
    """Fill the disk with a filler file until about `free` bytes are left."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    size = shutil.disk_usage(disk).free - free
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(0, size))
    return filler


def train_into(disk: Path, data: Path, name: str, expect_rc: int = 0, **kw):
    return run_training(sets(**{**COMMON, **kw}, train_data_dir=data, output_dir=disk, adaptor_name=name),
                        expect_rc=expect_rc, launch=False)


def disk_full_message(proc, run: Path) -> tuple[Path, int]:
    """The one message, printed once, naming a path in the run folder; no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    found = FULL.findall(proc.stderr)
    assert len(found) == 1, proc.stderr[-3000:]
    path, mb = Path(found[0][0]), int(found[0][1])
    assert path.is_relative_to(run) and mb >= 1
    return path, mb


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp-") or p.name.endswith(".tmp")]


def files_of(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def test_full_during_a_checkpoint_save_then_freeing_what_it_says_is_enough(tmp_path, disk):
    data = make_images(tmp_path / "data", n=2)
    filler = leave_free(disk, 200_000)
    p = train_into(disk, data, "ck", expect_rc=1, checkpointing_steps=1)
    run = disk / "ck"
    path, mb = disk_full_message(p, run)
    assert path == run / "checkpoints" / "checkpoint-1"
    events = read_events(run / "events.jsonl")
    assert events[-1]["type"] == "error" and FULL.search(events[-1]["message"])
    assert not temporaries(disk), temporaries(disk)  # the partial .tmp-checkpoint-1 is gone
    assert not list((run / "checkpoints").glob("checkpoint-*"))

    # free what the message asks for: the same run now completes
    with open(filler, "r+b") as fh:
        fh.truncate(max(0, filler.stat().st_size - mb * 2**20))
    train_into(disk, data, "ck", checkpointing_steps=1)
    assert (run / "ck.safetensors").is_file() and (run / "checkpoints" / "checkpoint-1").is_dir()
    assert read_events(run / "events.jsonl")[-1]["type"] == "done"


def test_full_during_the_final_write_leaves_neither_format(tmp_path, disk):
    data = make_images(tmp_path / "data", n=2)
    leave_free(disk, 110_000)  # room for the kohya file (~75 KB) but not the diffusers one as well
    p = train_into(disk, data, "fin", expect_rc=1)
    run = disk / "fin"
    path, _ = disk_full_message(p, run)
    assert path.name.endswith(".safetensors")
    assert not (run / "fin.safetensors").exists() and not (run / "diffusers").exists()
    assert not (run / "README.md").exists()
    assert not temporaries(disk), temporaries(disk)
    assert [e["type"] for e in read_events(run / "events.jsonl")][-1] == "error"


def test_full_at_the_start_is_a_message_not_a_traceback(tmp_path, disk):
    data = make_images(tmp_path / "data", n=2)
    leave_free(disk, 0)
    p = train_into(disk, data, "start", expect_rc=1)
    disk_full_message(p, disk / "start")
    assert not temporaries(disk)


def test_overwrite_on_a_full_disk_keeps_the_earlier_run_whole(tmp_path, disk):
    data = make_images(tmp_path / "data", n=2)
    train_into(disk, data, "ow", checkpointing_steps=1)
    run = disk / "ow"
    before = files_of(run)
    assert {"ow.safetensors", "events.jsonl", "train.log", "config.toml", "README.md"} <= set(before)
    leave_free(disk, 100_000)
    p = train_into(disk, data, "ow", expect_rc=1, checkpointing_steps=1, overwrite=True, learning_rate=5e-4)
    disk_full_message(p, run)
    assert files_of(run) == before  # events, log, config, checkpoints, both formats: all as they were
    assert sorted(p.name for p in run.iterdir()) == sorted({n.split("/")[0] for n in before})  # nothing added
