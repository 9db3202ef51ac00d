"""Whole models for the tools that need their weights (merge into a base, extract): loading a base as the
engine does, the weight a module path names, and a run's own base and outputs."""
from __future__ import annotations

from pathlib import Path

import torch

from engine.tools import ToolError


def load_pipeline(name: str, dtype: torch.dtype = torch.float32, allow_pickle: bool = False):
    """A base model (folder, builtin:, single file, hub id) as a sampling pipeline, through the engine's
    family loaders, with its own scheduler class when it has one."""
    from engine.families import ModelError, get_family
    from engine.generate import ModelRef
    from engine.methods.full import _sampling_scheduler

    ref = ModelRef(str(name), allow_pickle=allow_pickle)
    try:
        family, source = get_family(ref)
        comps = family.load(source, ref, dtype)
    except ModelError as e:
        raise ToolError(str(e)) from None
    pipe = family.make_pipeline(comps)
    pipe.scheduler = _sampling_scheduler(comps) or pipe.scheduler
    pipe.set_progress_bar_config(disable=True)
    return pipe, family


def weight_of(pipe, component: str, path: str) -> torch.nn.Parameter:
    """The weight of the Linear / Conv2d at `path` (text-encoder paths with or without `text_model.`)."""
    from engine.lora_load import _layer

    model = getattr(pipe, component, None)
    layer = _layer(model, path) if model is not None else None
    if layer is None or not hasattr(layer, "weight"):
        raise ToolError(f"the base model has no module {component}.{path}: is the LoRA made for another model?")
    return layer.weight


def run_model(run: Path) -> tuple[str, Path]:
    """(its base model, its trained pipeline folder) of a finished full fine-tune run folder."""
    from engine.generate import GenerationError, run_settings

    try:
        s = run_settings(Path(run))
    except GenerationError as e:
        raise ToolError(str(e)) from None
    full = s["method"] == "full" or (s["method"] == "dreambooth" and s["dreambooth_full"])
    folder = Path(run) / "diffusers"
    if not full:
        raise ToolError(f"{run} is a {s['method']} run, not a full fine-tune: it has no whole model to extract from")
    if not (folder / "model_index.json").is_file():
        raise ToolError(f"{run} has no trained model yet (no diffusers/model_index.json): has training finished?")
    return s["pretrained_model_name_or_path"], folder
