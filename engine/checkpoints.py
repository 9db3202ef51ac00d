"""Resumable checkpoints: accelerate's save_state with only the trained weights, written atomically.

A checkpoint folder `checkpoints/checkpoint-{step}/` holds the optimizer, scheduler and RNG states
(accelerate), `trained_state.safetensors` (the exact trained weights, for resuming) and the run's outputs (both
adaptor files for LoRA), so any checkpoint is usable as it is. Only weights found finite are saved (the loop checks
them first), and progress.json says so (`"finite": true`, which engine.finite.last_good reads).
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from engine import atomic
from engine.config import ConfigError
from engine.safetensors_files import NotSafetensors, read_header

_NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trained_state.safetensors"
PROGRESS_FILE = "progress.json"


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return sorted(found)


def find_resume_dir(value: str, ckpt_dir: Path) -> Path | None:
    """'latest' -> newest checkpoint (None if there is none); otherwise the folder given."""
    if value == "latest":
        found = list_checkpoints(ckpt_dir)
        p = found[-1][1] if found else None
    else:
        p = Path(value).expanduser()
        if not (p / PROGRESS_FILE).is_file():
            raise FileNotFoundError(f"resume_from_checkpoint = {value!r} is not a checkpoint folder (no "
                                    f"{PROGRESS_FILE}); use 'latest' or a folder under {ckpt_dir}")
    if p is not None:
        try:
            read_header(p / STATE_FILE, "resume from another checkpoint")
        except NotSafetensors as e:
            raise ConfigError(f"resume_from_checkpoint = {value!r}: {e}") from None
    return p


def save_trained_state(path: Path, state_dicts: dict[str, dict[str, torch.Tensor]]) -> None:
    flat = {f"{comp}::{k}": v for comp, sd in state_dicts.items() for k, v in sd.items()}
    save_file(flat, str(path))


def load_trained_state(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, v in load_file(str(path)).items():
        comp, k = key.split("::", 1)
        out.setdefault(comp, {})[k] = v
    return out


def write_progress(folder: Path, progress: dict) -> None:
    atomic.write_bytes(folder / PROGRESS_FILE, json.dumps(progress).encode())


def read_progress(folder: Path) -> dict:
    return json.loads((folder / PROGRESS_FILE).read_text())


def check_strategy(folder: Path, cfg) -> None:
    """A checkpoint's model and optimizer state are laid out by the strategy that saved it (sharded for fsdp and
    deepspeed): resuming it under another would fail deep in accelerate. Checkpoints from before the key: ddp."""
    from engine.config import ConfigError

    saved = read_progress(folder).get("distributed_strategy", "ddp")
    if saved != cfg.distributed_strategy:
        raise ConfigError(f"resume_from_checkpoint: {folder} was saved under distributed_strategy = {saved!r}, and "
                          f"this run sets distributed_strategy = {cfg.distributed_strategy!r}: resume with "
                          f"{saved!r}, or start afresh without resume_from_checkpoint")


def prune(ckpt_dir: Path, keep: int | None) -> list[Path]:
    if not keep:
        return []
    found = list_checkpoints(ckpt_dir)
    gone = [p for _, p in found[: max(0, len(found) - keep)]]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


def save_checkpoint(accelerator, ckpt_dir: Path, step: int, epoch: int, cfg, events, needed: atomic.Size) -> None:
    """Save weights the loop found finite into a temp folder, then rename: a crash mid-save never leaves a half
    checkpoint, and a failed save (a full disk: DiskFull, for about `needed` bytes) leaves nothing."""
    final = ckpt_dir / f"checkpoint-{step}"
    tmp = ckpt_dir / f".tmp-checkpoint-{step}"
    main = accelerator.is_main_process

    def remove_tmp():
        if main:
            shutil.rmtree(tmp, ignore_errors=True)

    with atomic.disk_full_guard(final, needed, cleanup=remove_tmp):
        if main:
            remove_tmp()
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if main:
            write_progress(tmp, {"step": step, "epoch": epoch, "finite": True,
                                 "distributed_strategy": cfg.distributed_strategy})
            atomic.normal_modes(tmp)  # safetensors writes 0600 files
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
    if main:
        prune(ckpt_dir, cfg.checkpoints_total_limit)
        events.emit("checkpoint", path=str(final), step=step)
    accelerator.wait_for_everyone()
