"""The run folder written as a set (DESIGN.md §3, §8): an earlier run's files stay whole until the new run is
complete, and the outputs appear together or not at all.

- A fresh run starts by moving an earlier run's files into `.earlier-run/` (renames: no space needed), if that
  run left results (an adaptor, checkpoints, or a finished account); a failed run's log is simply replaced. It
  then writes its events, log, config and samples in the run folder as it goes, where the UI tails them.
- It ends by publishing its outputs: written into a temp folder, then renamed into place, so both formats (and
  the model card) appear or neither. Only then is `.earlier-run/` deleted.
- A run that fails gives the folder back to the earlier run, unless it saved a checkpoint: then it can be resumed,
  and `.earlier-run/` waits for it to finish. A killed run is settled the same way at the next fresh start.
- Temps of a killed write (`.tmp-*` folders, `.*.tmp` files) are removed at every start and end.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from engine import atomic
from engine.atomic import Size
from engine.checkpoints import list_checkpoints
from engine.events import iter_events

BACKUP = ".earlier-run"


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def _entries(run_dir: Path) -> list[Path]:
    """What a run writes in its folder (DESIGN.md §3); anything else there is left alone."""
    names = ("events.jsonl", "train.log", "config.toml", "README.md", "samples", "checkpoints", "logs",
             "diffusers", "peft", "intermediate", f"{run_dir.name}.safetensors")
    return [run_dir / n for n in names if (run_dir / n).exists() or (run_dir / n).is_symlink()]


def earlier(run_dir: Path) -> Path:
    """Where a fresh run keeps the earlier run's files until it completes."""
    return run_dir / BACKUP


def _give_back(run_dir: Path) -> None:
    """An unfinished run that left nothing to resume makes way for the earlier run's files again."""
    backup = earlier(run_dir)
    if not backup.is_dir() or list_checkpoints(run_dir / "checkpoints"):
        return
    for p in _entries(run_dir):
        _remove(p)
    for p in backup.iterdir():
        os.replace(p, run_dir / p.name)
    backup.rmdir()


def recover(run_dir: Path, resuming: bool) -> None:
    """At start, before anything reads the folder: remove a killed write's temps; on a fresh start, settle a
    killed run (its earlier run's files back, unless it can be resumed)."""
    atomic.remove_temporaries(run_dir, skip=(BACKUP,))
    if not resuming:
        _give_back(run_dir)


def _has_results(run_dir: Path) -> bool:
    """An adaptor (either format), checkpoints, or the account of a finished run."""
    return (any((run_dir / name).exists() for name in (f"{run_dir.name}.safetensors", "diffusers", "peft"))
            or bool(list_checkpoints(run_dir / "checkpoints"))
            or any(e["type"] == "done" for e in iter_events(run_dir / "events.jsonl")))


def set_aside(run_dir: Path) -> None:
    """A fresh run: the earlier run's files into `.earlier-run/`, or dropped if it left no results. If
    `.earlier-run/` holds a complete run already (the folder holds an unfinished run's checkpoints, which
    overwrite = true gives up), it stays the one kept."""
    backup = earlier(run_dir)
    entries = _entries(run_dir)
    if backup.is_dir() or not _has_results(run_dir):
        for p in entries:
            _remove(p)
    else:
        with atomic.disk_full_guard(backup, 4096):
            backup.mkdir()
        for p in entries:
            os.replace(p, backup / p.name)


def finish(run_dir: Path, complete: bool) -> None:
    """At the end, whatever happened: temps removed; the earlier run's files dropped if this run completed, else
    given back unless this run can be resumed."""
    atomic.remove_temporaries(run_dir, skip=(BACKUP,))
    if complete:
        shutil.rmtree(earlier(run_dir), ignore_errors=True)
    else:
        _give_back(run_dir)


def publish(run_dir: Path, write: Callable[[Path], dict[str, str]], needed: Size) -> dict[str, str]:
    """`write(folder)` writes the outputs (about `needed` bytes) into a temp folder and returns {kind: path in it};
    they are then renamed into run_dir together, replacing what is there, and their paths there returned. A write
    that fails, for want of space or otherwise, leaves run_dir as it was."""
    staging = atomic.temp_dir(run_dir, "outputs")
    moved: list[tuple[Path, Path | None]] = []  # (new entry in run_dir, the entry it replaced, set aside)
    try:
        try:
            written = write(staging)
        except Exception as e:
            if not atomic.is_disk_full(e, staging):
                raise
            shutil.rmtree(staging, ignore_errors=True)
            inner = getattr(e, "path", None)  # name the output, not its temp
            target = run_dir / inner.relative_to(staging) if inner and inner.is_relative_to(staging) else run_dir
            raise atomic.DiskFull(target, needed, e) from e
        atomic.normal_modes(staging)
        for p in sorted(staging.iterdir()):
            dest, old = run_dir / p.name, None
            if dest.exists():
                old = run_dir / f".tmp-old-{p.name}"
                os.replace(dest, old)
            moved.append((dest, old))
            os.replace(p, dest)
    except BaseException:
        for dest, old in reversed(moved):  # renames only: putting back cannot fail for want of space
            if dest.exists():  # the new entry (the one it replaced was renamed away)
                _remove(dest)
            if old is not None:
                os.replace(old, dest)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for _, old in moved:
        if old is not None:
            _remove(old)
    return {kind: str(run_dir / Path(path).relative_to(staging)) for kind, path in written.items()}
