"""A LoRA from the difference between two checkpoints (a full fine-tune and its base), as sd-scripts'
networks/extract_lora_from_models.py does: each Linear / Conv2d weight's change is cut by SVD to a rank (a fixed
one, or per module by a dynamic rule, svd.METHODS), the singular values in lora_up and alpha = rank (scale 1).

Differences from kohya's script, on purpose: every Linear and Conv2d of the UNet whose weight changed is taken
(kohya takes the attention blocks, and the ResNet convolutions only with --conv_dim), so nothing the fine-tune
changed is silently dropped; values are not clamped at a quantile (kohya's clamp_quantile), which only loses
accuracy. As in kohya, a text encoder is taken only when some weight of it moved by more than `min_diff`
(a fine-tune that did not train it changes nothing there).
"""
from __future__ import annotations

from pathlib import Path

import torch

from engine.tools import ToolError, lora_file, names, svd

_LAYERS = (torch.nn.Linear, torch.nn.Conv2d)


def _layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, _LAYERS)}


@torch.no_grad()
def extract(base_pipe, tuned_pipe, rank: int, *, conv_rank: int | None = None, method: str | None = None,
            param: float | None = None, min_diff: float = 0.01, family: str | None = None,
            ) -> tuple[lora_file.LoraFile, list[dict]]:
    """(the LoRA of tuned - base, a row per module: rank, fro_retained, fro_norm); text encoders only where
    they changed by more than min_diff."""
    if not isinstance(rank, int) or rank < 1:
        raise ToolError(f"rank = {rank!r}: a whole number of at least 1")
    if conv_rank is not None and conv_rank < 1:
        raise ToolError(f"conv rank = {conv_rank!r}: a whole number of at least 1")
    svd.check_method(method, param)
    modules, rows = {}, []
    for component in names.COMPONENTS:
        base, tuned = getattr(base_pipe, component, None), getattr(tuned_pipe, component, None)
        if base is None or tuned is None:
            continue
        theirs, ours = _layers(base), _layers(tuned)
        if set(theirs) != set(ours) or any(theirs[n].weight.shape != ours[n].weight.shape for n in ours):
            raise ToolError(f"the {component} of the two models differ in their layers: is the fine-tune made "
                            "from this base model?")
        diffs = {n: ours[n].weight.float() - theirs[n].weight.float() for n in ours}
        largest = max((float(d.abs().max()) for d in diffs.values()), default=0.0)
        if component != "unet" and largest <= min_diff:
            continue  # kohya: "Text encoder is same. Extract U-Net only."
        for path, diff in diffs.items():
            if not float(diff.abs().max()) > 0:
                continue
            shape = tuple(diff.shape)
            is_conv = len(shape) == 4 and shape[2:] != (1, 1)
            u, s, vh = svd.svd_of(diff.flatten(1))
            k = svd.choose_rank(s, (conv_rank or rank) if is_conv else rank, method, param)
            key = (component, path if component == "unet" else names.canonical_te(path))
            modules[key] = svd.lora_module(u, s, vh, k, shape)
            rows.append({"component": component, "module": key[1], "new_rank": k, **svd.kept(s, k)})
    if not modules:
        raise ToolError("the two models have the same weights: nothing to extract")
    how = f"dynamic {method} {param:g} (at most rank {rank})" if method else f"rank {rank}"
    ranks = {m.rank for m in modules.values()}  # alpha = rank everywhere (scale 1), so both vary together
    one = str(ranks.pop()) if len(ranks) == 1 else None
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": one or "Dynamic",
            "ss_network_alpha": str(float(one)) if one else "Dynamic",
            "ss_training_comment": f"extracted by Adaptor Studio at {how}"}
    return lora_file.LoraFile(modules, meta, "kohya", family, None, []), rows


def extract_files(tuned: str, base: str | None, out: str | Path, rank: int, *, layout: str = "kohya",
                  allow_pickle: bool = False, **kw) -> tuple[Path, list[dict]]:
    """`tuned`: a model (folder, single file, builtin:) or one of our full fine-tune run folders (its base is
    then the run's unless `base` is given)."""
    from engine.tools.models import load_pipeline, run_model

    run = Path(tuned).expanduser()
    if run.is_dir() and (run / "config.toml").is_file():
        run_base, folder = run_model(run)
        base, tuned = base or run_base, str(folder)
    if not base:
        raise ToolError("give the base model the fine-tune was made from (--base)")
    base_pipe, family = load_pipeline(base, allow_pickle=allow_pickle)
    tuned_pipe, _ = load_pipeline(tuned, allow_pickle=allow_pickle)
    lf, rows = extract(base_pipe, tuned_pipe, rank, family=family.name, **kw)
    lf.metadata["ss_base_model"] = str(base)
    lf.metadata["modelspec.title"] = Path(out).stem
    arch = names.model_arch(base, allow_pickle) if layout == "comfyui" else None
    return lora_file.write(lf, out, layout, arch=arch), rows
