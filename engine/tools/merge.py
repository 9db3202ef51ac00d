"""Several LoRAs into one, or LoRAs into a base model.

- concat: each module's factors side by side, up_i scaled by weight_i x scale_i: the ranks add and the result
  changes every weight exactly as the LoRAs loaded together at those weights do. LoRA modules only.
- svd: the weighted sum of the changes cut to a rank (fixed, or by a dynamic rule, svd.METHODS) per module;
  takes LoHa and LoKr too.
- into a base: W += weight x change for every module (DoRA: W = m (W + w s BA) / |W + w s BA| per output
  row, as peft merges it), written as a diffusers folder and a single-file checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.tools import ToolError, lora_file, names, svd
from engine.tools.lora_file import LoraFile, Module

MODES = ("concat", "svd")


def _check(items: list[tuple[LoraFile, float]]) -> None:
    if len(items) < 2:
        raise ToolError("give at least two LoRAs to merge")
    families = {lf.family for lf, _ in items if lf.family}
    if len(families) > 1:
        raise ToolError(f"the LoRAs are made for different families ({', '.join(sorted(families))})")
    shapes: dict = {}
    for lf, weight in items:
        if not isinstance(weight, (int, float)) or weight != weight:
            raise ToolError(f"weight {weight!r} for {lf.path}: a number")
        for key, m in lf.modules.items():
            flat = m.flat_shape()
            if shapes.setdefault(key, flat) != flat:
                raise ToolError(f"{lf.path}: {key[0]}.{key[1]} changes a {flat} weight, another LoRA a "
                                f"{shapes[key]} one: are they made for the same base model?")


def merge_loras(items: list[tuple[LoraFile, float]], mode: str = "concat", rank: int | None = None, *,
                method: str | None = None, param: float | None = None, arch=None) -> tuple[LoraFile, list[dict]]:
    _check(items)
    if mode not in MODES:
        raise ToolError(f"mode {mode!r}: one of {', '.join(MODES)}")
    if mode == "svd":
        svd.check_method(method, param)
        if not isinstance(rank, int) or rank < 1:
            raise ToolError(f"svd merge needs a rank (--rank, the most any module keeps), not {rank!r}")
    keys = sorted({k for lf, _ in items for k in lf.modules})
    first = items[0][0]
    arch = arch or (names.published_arch(first.family) if first.family else None)
    modules, rows = {}, []
    for key in keys:
        parts = [(lf.modules[key], w) for lf, w in items if key in lf.modules]
        if mode == "concat":
            modules[key] = _concat(key, parts)
            continue
        shape = svd.full_shape(parts[0][0], key, arch)
        if any(m.dora for m, _ in parts):
            svd.decompose(next(m for m, _ in parts if m.dora))  # raises the DoRA message
        if all(m.kind == "lora" for m, _ in parts):
            u, s, vh = svd.svd_of_factors(torch.cat([m.factors()[0] * w for m, w in parts], 1),
                                          torch.cat([m.factors()[1] for m, _ in parts], 0))
        else:
            u, s, vh = svd.svd_of(sum(m.delta() * w for m, w in parts))
        k = svd.choose_rank(s, rank, method, param)
        modules[key] = svd.lora_module(u, s, vh, k, shape)
        rows.append({"component": key[0], "module": key[1], "new_rank": k, **svd.kept(s, k)})
    return LoraFile(modules, _metadata(items, mode), "kohya", first.family, None, []), rows


def _concat(key, parts: list[tuple[Module, float]]) -> Module:
    if any(m.kind != "lora" or m.dora for m, _ in parts):
        raise ToolError(f"{key[0]}.{key[1]}: concatenation joins plain LoRA modules; a LoHa, LoKr or DoRA module "
                        "needs --mode svd (or merge it into a base)")
    ups = [m.parts["lora_B.weight"].float() * (w * m.scale) for m, w in parts]
    downs = [m.parts["lora_A.weight"].float() for m, _ in parts]
    up, down = torch.cat(ups, 1).contiguous(), torch.cat(downs, 0).contiguous()
    return Module("lora", {"lora_A.weight": down, "lora_B.weight": up}, float(down.shape[0]), down.shape[0])


def _metadata(items, mode: str) -> dict[str, str]:
    meta = {k: v for k, v in items[0][0].metadata.items() if k.startswith(("modelspec.", "ss_base_model",
                                                                           "ss_v2", "ss_v_param", "ss_sd_model"))}
    triggers = [lf.metadata.get("modelspec.trigger_phrase") for lf, _ in items]
    meta["modelspec.trigger_phrase"] = ", ".join(dict.fromkeys(t for t in triggers if t))
    meta["ss_network_module"] = "networks.lora"
    meta["ss_network_dim"] = meta["ss_network_alpha"] = "Dynamic"
    meta["ss_merged_from"] = json.dumps([{"file": str(lf.path), "weight": w} for lf, w in items])
    meta["ss_training_comment"] = f"merged by Adaptor Studio ({mode}) from {len(items)} LoRAs"
    return meta


def merge_files(sources: list[tuple[str, float]], out: str | Path, *, mode: str = "concat", rank: int | None = None,
                layout: str = "kohya", base: str | None = None, **kw) -> tuple[Path, list[dict]]:
    arch = names.model_arch(base) if base else None
    items = [(lora_file.read(p, arch), float(w)) for p, w in sources]
    merged, rows = merge_loras(items, mode, rank, arch=arch, **kw)
    return lora_file.write(merged, out, layout, arch=arch), rows


# ----------------------------------------------------------------------------- into a base model

@torch.no_grad()
def apply_to_pipeline(pipe, lf: LoraFile, weight: float = 1.0) -> int:
    """Add the LoRA's changes (times weight) into the pipeline's own weights; returns how many modules."""
    from engine.tools.models import weight_of

    for (component, p), m in lf.modules.items():
        w = weight_of(pipe, component, p)
        if m.flat_shape() != (w.shape[0], w[0].numel()):
            raise ToolError(f"{lf.path}: {component}.{p} changes a {m.flat_shape()} weight but the base's is "
                            f"{tuple(w.shape)}: is the LoRA made for this base model?")
        delta = m.delta().reshape(w.shape).to(w.dtype)
        if not m.dora:
            w.add_(delta * weight)
            continue
        v = w.float() + delta.float() * weight
        norm = v.flatten(1).norm(dim=1).reshape(-1, *([1] * (w.dim() - 1)))
        w.copy_((v * m.parts["lora_magnitude_vector"].float().reshape(norm.shape) / norm).to(w.dtype))
    return len(lf.modules)


def merge_into_base(base: str, sources: list[tuple[str, float]], out_dir: str | Path, name: str,
                    allow_pickle: bool = False) -> dict[str, str]:
    """The base with the LoRAs merged in: `out_dir/diffusers/` and `out_dir/{name}.safetensors`."""
    from engine.methods.full import save_pipeline
    from engine.paths import UnsafePath, safe_child
    from engine.tools.models import load_pipeline

    out_dir = Path(out_dir).expanduser()
    try:
        single = safe_child(out_dir, f"{name}.safetensors")
    except UnsafePath as e:
        raise ToolError(f"name: {e}") from None
    if not sources:
        raise ToolError("give at least one LoRA to merge into the base")
    arch = names.model_arch(base, allow_pickle)
    files = [(lora_file.read(p, arch), float(w)) for p, w in sources]
    pipe, family = load_pipeline(base, allow_pickle=allow_pickle)
    for lf, w in files:
        apply_to_pipeline(pipe, lf, w)
    merged = json.dumps([{"file": str(lf.path), "weight": w} for lf, w in files])
    return save_pipeline(pipe, family, out_dir / "diffusers", single, {
        "modelspec.sai_model_spec": "1.0.0", "modelspec.title": name,
        "modelspec.architecture": {"sdxl": "stable-diffusion-xl-v1-base", "sd2": "stable-diffusion-v2-512"}
        .get(family.name, "stable-diffusion-v1"), "ss_base_model": str(base), "ss_merged_loras": merged})
