"""Lower a LoRA's rank by SVD: a fixed rank, or per module by kohya's dynamic rules (svd.METHODS), reporting
the Frobenius norm each module keeps.

Each module's weight change (scale included) is decomposed and cut to the new rank; the module keeps its
scale (alpha = scale x new rank, the singular values in lora_up, as sd-scripts' resize_lora.py does), so a
file resized to its own rank draws what the original draws. LoHa and LoKr modules come out as plain LoRA
modules of the new rank (their change is decomposed whole). Ranks never grow: a module already at or below
the new rank is kept as it is (with method None) or cut by the rule.
"""
from __future__ import annotations

from pathlib import Path

from engine.tools import ToolError, lora_file, names, svd


def resize(lf: lora_file.LoraFile, rank: int, *, conv_rank: int | None = None, method: str | None = None,
           param: float | None = None, arch: names.Arch | None = None) -> tuple[lora_file.LoraFile, list[dict]]:
    """(the resized LoraFile, a row per module: old and new rank, fro_retained, sum_retained)."""
    if not isinstance(rank, int) or rank < 1:
        raise ToolError(f"rank = {rank!r}: a whole number of at least 1")
    if conv_rank is not None and conv_rank < 1:
        raise ToolError(f"conv rank = {conv_rank!r}: a whole number of at least 1")
    svd.check_method(method, param)
    if arch is None and lf.family:
        arch = names.published_arch(lf.family)
    modules, rows = {}, []
    for key, m in lf.modules.items():
        shape = svd.full_shape(m, key, arch)
        is_conv = len(shape) == 4 and shape[2:] != (1, 1)
        cap = conv_rank if (is_conv and conv_rank) else rank
        u, s, vh = svd.decompose(m)
        k = svd.choose_rank(s, cap, method, param)
        scale = m.scale if m.kind == "lora" else 1.0
        modules[key] = svd.lora_module(u, s, vh, k, shape, scale)
        rows.append({"component": key[0], "module": key[1], "old_rank": m.rank, "new_rank": k,
                     "alpha": modules[key].alpha, **svd.kept(s, k)})
    meta = dict(lf.metadata)
    dims = {r["new_rank"] for r in rows}
    meta["ss_network_dim"] = str(dims.pop()) if len(dims) == 1 else "Dynamic"
    alphas = {m.alpha for m in modules.values()}
    meta["ss_network_alpha"] = str(alphas.pop()) if len(alphas) == 1 else "Dynamic"
    how = f"dynamic {method} {param:g} (at most rank {rank})" if method else f"rank {rank}"
    old = meta.get("ss_training_comment", "")
    meta["ss_training_comment"] = f"resized by Adaptor Studio to {how}" + (f"; {old}" if old else "")
    return lora_file.LoraFile(modules, meta, lf.layout, lf.family, lf.path, []), rows


def summary(rows: list[dict]) -> dict:
    fro = [r["fro_retained"] for r in rows]
    return {"modules": len(rows), "mean_fro_retained": sum(fro) / len(fro), "min_fro_retained": min(fro),
            "ranks": sorted({r["new_rank"] for r in rows})}


def format_rows(rows: list[dict]) -> str:
    lines = [f"{'module':<80} {'rank':>9} {'fro kept':>9} {'sum(S) kept':>12}"]
    for r in rows:
        name = f"{r['component']}.{r['module']}"
        lines.append(f"{name[-80:]:<80} {r['old_rank']:>4}->{r['new_rank']:<4} {r['fro_retained']:>9.2%} "
                     f"{r['sum_retained']:>12.2%}")
    s = summary(rows)
    lines.append(f"{s['modules']} modules; Frobenius norm kept: mean {s['mean_fro_retained']:.2%}, "
                 f"least {s['min_fro_retained']:.2%}; ranks {s['ranks']}")
    return "\n".join(lines)


def resize_file(src: str | Path, out: str | Path, rank: int, *, layout: str | None = None, base: str | None = None,
                **kw) -> tuple[Path, list[dict]]:
    arch = names.model_arch(base) if base else None
    lf = lora_file.read(src, arch)
    resized, rows = resize(lf, rank, arch=arch, **kw)
    layout = layout or ("kohya" if lf.layout in ("peft", "kohya") else lf.layout)
    return lora_file.write(resized, out, layout, arch=arch), rows
