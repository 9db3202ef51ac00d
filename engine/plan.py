"""What a config will do before it runs: images, steps, epochs and an estimated time.

The Training tab shows this next to "Start training". The time comes from earlier runs here of the same
base model, method, resolution and batch (their step events record it/s), so it reflects this machine;
with no such run there is no honest figure and the plan says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from engine.events import format_duration, iter_events
from engine.launch import total_processes

# Seconds per training image on the 2-core CPU the project is developed on (toy presets: 300 steps of 8
# images in about 100 s with LoRA on attention, feed-forward and the text encoder). Used only until a run
# of the same kind has been timed on this machine.
REFERENCE_SECONDS_PER_IMAGE = {("builtin:toy", 64): 0.04}


@dataclass
class Plan:
    num_images: int | None  # images seen per epoch (repeats counted); None when not countable offline
    steps_per_epoch: int | None
    total_steps: int | None
    num_epochs: int | None
    seconds_per_step: float | None
    basis: str  # where the time estimate comes from

    @property
    def estimated_seconds(self) -> float | None:
        if self.total_steps is None or self.seconds_per_step is None:
            return None
        return self.total_steps * self.seconds_per_step

    def summary(self) -> str:
        if self.total_steps is None:
            return f"Steps: unknown until the data is read ({self.basis})."
        eta = self.estimated_seconds
        time_s = f"about {format_duration(eta)} ({self.basis})" if eta is not None else f"unknown ({self.basis})"
        return (f"{counted(self.num_images, 'image')} per epoch, {counted(self.steps_per_epoch, 'step')} per epoch: "
                f"**{counted(self.total_steps, 'step')}** in {counted(self.num_epochs, 'epoch')}. "
                f"Estimated time: {time_s}.")


def counted(n: int, noun: str) -> str:
    """"1 step", "2 steps"."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def count_images(cfg) -> int | None:
    """Images per epoch with repeats, for a local folder; None for a datasets id (reading it may need the hub)."""
    if cfg.train_data_dir is None:
        return None
    from engine.data.folder import folder_candidates
    candidates, _ = folder_candidates(Path(cfg.train_data_dir), cfg, warn=lambda _msg: None)
    return sum(c.repeats for c in candidates) * cfg.repeats


def _similar(run_cfg: dict, cfg) -> bool:
    keys = ("pretrained_model_name_or_path", "method", "resolution", "train_batch_size", "train_text_encoder",
            "gradient_checkpointing", "mixed_precision", "cache_latents", "num_processes", "num_machines")
    return all(run_cfg.get(k) == getattr(cfg, k) for k in keys)


def measured_seconds_per_step(cfg, runs_root: Path) -> float | None:
    """Median s/it of the last step event of earlier similar runs under runs_root."""
    import tomllib

    from engine.config import flatten
    rates = []
    for config_file in sorted(runs_root.glob("*/config.toml")):
        try:
            run_cfg = flatten(tomllib.loads(config_file.read_text(encoding="utf-8")))
        except Exception:  # a run folder from another version or a half-edited file: not evidence
            continue
        if not _similar(run_cfg, cfg):
            continue
        last = None
        for event in iter_events(config_file.parent / "events.jsonl"):
            if event["type"] == "step" and isinstance(event.get("it_per_s"), (int, float)) and event["it_per_s"] > 0:
                last = event["it_per_s"]
        if last:
            rates.append(1.0 / last)
    if not rates:
        return None
    rates.sort()
    return rates[len(rates) // 2]


def make_plan(cfg, runs_root: Path | None = None) -> Plan:
    """Steps as the loop counts them (buckets may add a few partial batches)."""
    n = count_images(cfg)
    if n is None:
        steps_per_epoch = total = epochs = None
    else:
        # each process loads its own share of the batches (accelerate's sharding), as the loop counts them
        batches = math.ceil(math.ceil(n / cfg.train_batch_size) / total_processes(cfg))
        steps_per_epoch = max(1, math.ceil(batches / cfg.gradient_accumulation_steps))
        total = cfg.max_train_steps or cfg.num_train_epochs * steps_per_epoch
        epochs = math.ceil(total / steps_per_epoch)
    root = Path(runs_root if runs_root is not None else cfg.output_dir)
    sps = measured_seconds_per_step(cfg, root) if root.is_dir() else None
    basis = "from earlier runs of this model and batch size here"
    reference = REFERENCE_SECONDS_PER_IMAGE.get((cfg.pretrained_model_name_or_path, cfg.resolution))
    if sps is None and reference is not None:
        sps = reference * cfg.train_batch_size * cfg.gradient_accumulation_steps
        basis = "measured on a 2-core CPU; a first run here will time it for this machine"
    elif sps is None:
        basis = "no earlier run of this model, method, resolution and batch size here to time it by"
    if n is None:
        basis = "a datasets id is read when training starts"
    return Plan(n, steps_per_epoch, total, epochs, sps, basis)
