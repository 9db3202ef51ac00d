"""What the run trains on, for the Run tab: the GPU's name with its memory used and total, or "training on
CPU". The app process never imports torch, so the GPU is read from nvidia-smi (cheap, cached a few seconds);
a `device` in the run's start event ({"type": "cuda" | "cpu" | "mps", "name": ...}) wins when the engine
writes one.
"""
from __future__ import annotations

import html
import importlib.metadata
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass

CACHE_S = 3.0


@dataclass(frozen=True)
class Gpu:
    name: str
    used_mb: float
    total_mb: float


_cache: tuple[float, list[Gpu]] = (0.0, [])
_lock = threading.Lock()


def _visible_index() -> str | None:
    """The GPU accelerate trains on (the first visible one); '' when CUDA_VISIBLE_DEVICES hides them all."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return "0"
    first = visible.split(",")[0].strip()
    return None if first in ("", "-1") else first


def gpus() -> list[Gpu]:
    """The training GPU as nvidia-smi sees it now ([] without one)."""
    global _cache
    with _lock:
        if time.monotonic() - _cache[0] < CACHE_S:
            return _cache[1]
        found: list[Gpu] = []
        index, exe = _visible_index(), shutil.which("nvidia-smi")
        if index is not None and exe:
            try:
                out = subprocess.run([exe, f"--id={index}", "--query-gpu=name,memory.used,memory.total",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
                for line in out.stdout.splitlines() if out.returncode == 0 else []:
                    name, used, total = (x.strip() for x in line.rsplit(",", 2))
                    found.append(Gpu(name, float(used), float(total)))
            except (OSError, ValueError, subprocess.TimeoutExpired):
                found = []
        _cache = (time.monotonic(), found)
        return found


def torch_has_cuda() -> bool:
    """Whether this environment's torch is a CUDA build (a '+cpu' wheel trains on the CPU beside any GPU)."""
    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return False
    return "+cpu" not in version


def device_badge(device: dict | None = None) -> str:
    """A one-line badge: the run's GPU and its memory now, or training on CPU."""
    kind = (device or {}).get("type")
    found = gpus() if kind == "cuda" or (kind is None and torch_has_cuda()) else []
    if kind == "cuda" or (kind is None and found):
        if found:
            g = found[0]
            return (f'<span class="device-badge gpu" data-device="cuda">GPU: {html.escape(g.name)} · memory '
                    f'{g.used_mb / 1024:.1f} / {g.total_mb / 1024:.1f} GB used</span>')
        name = html.escape(str((device or {}).get("name") or "CUDA GPU"))
        return f'<span class="device-badge gpu" data-device="cuda">GPU: {name}</span>'
    if kind == "mps":
        return '<span class="device-badge gpu" data-device="mps">GPU: Apple (MPS)</span>'
    return '<span class="device-badge cpu" data-device="cpu">training on CPU</span>'
