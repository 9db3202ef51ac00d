"""NaN and infinity in trained weights: found before anything is saved as a checkpoint or an adaptor (DESIGN.md §8:
a checkpoint with non-finite weights is never called "good").

The loss is checked only at logging steps, and a step can turn weights into NaN while its loss is still finite
(Adam with adam_epsilon = 0 divides 0 by 0 on the zero-initialised LoRA up-weights): so the weights themselves,
and the optimizer state a resume would carry on from, are checked.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import torch

from engine import checkpoints as ckpt
from engine.errors import TrainingError

Named = Iterable[tuple[str, torch.Tensor]]
HINT = ("lower learning_rate, use bf16 instead of fp16, or an fp16-fixed VAE (pretrained_vae_model_name_or_path) "
        "for SDXL")


def check_loss(loss: float, step: int, ckpt_dir: Path) -> None:
    if not math.isfinite(loss):
        raise TrainingError(f"loss became {loss} at step {step}; {good_checkpoint_text(ckpt_dir)}", hint=HINT)


def check_before_save(accelerator, modules: dict, optimizer, step: int, ckpt_dir: Path) -> int:
    """Stop (TrainingError) rather than save trained weights, or a checkpoint's optimizer state (with `optimizer`),
    that hold NaN or infinity; else return the bytes they take. Every process stops together."""
    parts = {"trained weights": list(trained_tensors(modules))}
    if optimizer is not None:
        parts["optimizer state"] = list(optimizer_tensors(optimizer))
    counts = torch.stack([count_nonfinite(named).to(accelerator.device) for named in parts.values()])
    counts = accelerator.reduce(counts, "sum").tolist()
    bad = [f"the {what} ({describe(parts[what])})" for what, n in zip(parts, counts) if n]
    if bad:
        saved = "the adaptor" if optimizer is None else f"checkpoint-{step}"
        raise TrainingError(f"{' and '.join(bad)} hold NaN or infinite values after step {step}, so {saved} was not "
                            f"saved; {good_checkpoint_text(ckpt_dir)}", hint=HINT)
    return sum(t.numel() * t.element_size() for named in parts.values() for _, t in named)


def good_checkpoint_text(ckpt_dir: Path) -> str:
    good = last_good(ckpt_dir)
    if good is None:
        return "no checkpoint with finite weights had been saved"
    newest = ckpt.list_checkpoints(ckpt_dir)[-1][1]
    return f"the last good checkpoint is {good} (resume_from_checkpoint = \"{'latest' if good == newest else good}\")"


def last_good(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint whose weights are finite: progress.json says so (`"finite": true`), or, for one saved
    before weights were checked, its weights show it."""
    for _, folder in reversed(ckpt.list_checkpoints(ckpt_dir)):
        try:
            good = ckpt.read_progress(folder).get("finite")
            if good is None:
                good = file_is_finite(folder / ckpt.STATE_FILE)
        except Exception:  # noqa: BLE001 - an unreadable checkpoint is not a good one
            good = False
        if good:
            return folder
    return None


def trained_tensors(modules: dict[str, torch.nn.Module]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every trained weight: what requires grad."""
    for component, module in modules.items():
        for name, p in module.named_parameters():
            if p.requires_grad:
                yield f"{component}.{name}", _local(p.detach())


def optimizer_tensors(optimizer) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the optimizer's floating state (Adam's moments ...), which a resume carries on from."""
    for state in optimizer.state.values():
        for key, v in state.items():
            if torch.is_tensor(v) and v.is_floating_point():
                yield f"optimizer.{key}", _local(v)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP2) tensor's own shard: each process counts its part and the counts are summed."""
    return t.to_local() if hasattr(t, "to_local") else t


def count_nonfinite(named: Named) -> torch.Tensor:
    """How many values are NaN or infinite, as one tensor on the tensors' device (a single host sync to read)."""
    counts = [(~torch.isfinite(t)).sum() for _, t in named if t.is_floating_point()]
    return torch.stack(counts).sum() if counts else torch.zeros((), dtype=torch.long)


def _kind(name: str) -> str:
    """`unet.down_blocks.0...to_q.lora_A.default.weight` -> `lora_A`; `optimizer.exp_avg` -> `exp_avg`."""
    if name.startswith("optimizer."):
        return name.split(".", 1)[1]
    parts = [p for p in name.split(".") if p != "default" and not p.isdigit()]
    leaf = parts[-2] if len(parts) > 1 and parts[-1] in ("weight", "bias") else parts[-1]
    return re.sub(r"_\d+$", "", leaf)


def describe(named: Named) -> str:
    """Which values are NaN or infinite, e.g. "14,336 of 30,720 values, all in lora_A"."""
    bad, total, where = 0, 0, Counter()
    for name, t in named:
        n = int((~torch.isfinite(t)).sum()) if t.is_floating_point() else 0
        bad, total = bad + n, total + t.numel()
        if n:
            where[_kind(name)] += n
    kinds = [k for k, _ in where.most_common()]
    place = (f"all in {kinds[0]}" if len(kinds) == 1
             else "in " + ", ".join(kinds[:3]) + (f" and {len(kinds) - 3} more" if len(kinds) > 3 else ""))
    return f"{bad:,} of {total:,} values, {place}"


def file_is_finite(path: Path) -> bool:
    """Every floating tensor in a safetensors file is finite (read one tensor at a time)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        for key in fh.keys():
            t = fh.get_tensor(key)
            if t.is_floating_point() and not torch.isfinite(t).all():
                return False
    return True
