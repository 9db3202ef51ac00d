"""What the run trains on, for the Run tab: the GPU's name with its memory used and total, or "training on
CPU". The app process never imports torch, so the GPU is read from nvidia-smi (cheap, cached a few seconds);
a `device` in the run's start event ({"type": "cuda" | "cpu" | "mps", "name": ...}) wins when the engine
writes one.
"""
from __future__ import annotations

import html
import importlib.metadata
import os
import threading
import time
from dataclasses import dataclass

from engine.launch import nvidia_smi, visible_gpus

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
        index = _visible_index()
        for row in nvidia_smi("name,memory.used,memory.total", index) if index is not None else []:
            try:
                found.append(Gpu(",".join(row[:-2]), float(row[-2]), float(row[-1])))
            except (IndexError, ValueError):
                found = []
                break
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


def training_gpus() -> list[dict]:
    """The GPUs a run could train on here ([] with a CPU-only torch, whatever the machine has)."""
    return visible_gpus() if torch_has_cuda() else []


def gpu_id_suggestions() -> list[str] | None:
    """What the gpu_ids box offers: "all", each GPU, and the first two, three, ... together (None: a plain box)."""
    ids = [g["id"] for g in training_gpus()]
    if not ids:
        return None
    return ["all"] + ids + [",".join(ids[:n]) for n in range(2, len(ids) + 1)]


def device_picker_html() -> str:
    """Above the [distributed] settings: this machine's GPUs, or that it trains on the CPU."""
    found = training_gpus()
    if not found:
        return ('<p class="device-picker cpu" data-gpus="0">No CUDA GPU here: runs train on the CPU. Several '
                "processes (num_processes) still train data-parallel there (gloo), each on its own batch.</p>")
    items = "".join(f"<li><code>{html.escape(g['id'])}</code> {html.escape(g['name'])} ({g['memory_gb']:g} GB)</li>"
                    for g in found)
    return (f'<div class="device-picker gpu" data-gpus="{len(found)}"><p>GPUs on this machine (gpu_ids picks '
            f"them; one training process per GPU):</p><ul>{items}</ul></div>")
