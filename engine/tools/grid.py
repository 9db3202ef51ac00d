"""An X/Y grid of adaptors: a column per LoRA scale, a row per adaptor (LoRA files, run folders, checkpoints or
whole models), all with one prompt and seed. The grid's settings go into the PNG's `parameters` text chunk as
JSON (the axes, their values, the prompt and sampling), so the picture says how it was made.

Generation is engine.generate's (the Compare tab's): the same pipelines, adaptor loading and sampler, so a cell
is the image Compare draws for that adaptor at that scale.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from engine.tools import ToolError

MAX_CELLS = 64


def _row_labels(grid: Image.Image, header: int, labels: list[str], cell_h: int) -> Image.Image:
    """The grid with a strip on its left naming each row."""
    font = ImageFont.load_default(size=max(10, min(20, cell_h // 8)))
    draw = ImageDraw.Draw(grid)
    width = int(min(240, max(draw.textlength(t, font=font) for t in labels) + 12))
    out = Image.new("RGB", (grid.width + width, grid.height), "white")
    out.paste(grid, (width, 0))
    draw = ImageDraw.Draw(out)
    for r, text in enumerate(labels):
        while len(text) > 1 and draw.textlength(text, font=font) > width - 8:
            text = "…" + text[2:]
        draw.text((4, header + r * cell_h + cell_h // 2 - 6), text, fill="black", font=font)
    return out


def xy_grid(adaptors: list[str], scales: list[float], prompt: str, out: str | Path, *, base: str | None = None,
            seed: int = 0, steps: int = 20, guidance: float = 7.5, width: int | None = None,
            height: int | None = None, negative_prompt: str = "", use_trigger: bool = True,
            pipe_cache=None, dtype: str = "auto", labels: list[str] | None = None) -> dict:
    """The grid PNG at `out` (and each cell under `<out stem>-cells/`); returns what it drew. labels name the
    rows (default: each adaptor's file or folder name, the same for two checkpoints of one run)."""
    from engine import generate as g

    if not adaptors or not scales:
        raise ToolError("give at least one adaptor (--adaptor) and one scale (--scales)")
    if len(adaptors) * len(scales) > MAX_CELLS:
        raise ToolError(f"{len(adaptors)} adaptors x {len(scales)} scales: at most {MAX_CELLS} cells in one grid")
    try:
        for s in scales:
            g._check("scale", s, -10.0, 10.0)
        g._check("seed", seed, 0, 2**63 - 1)
        resolved = [g.resolve_adaptor(a, base) for a in adaptors]
        cache = pipe_cache or g.PipeCache()
        torch_dtype = g.resolve_dtype(dtype, cache.device)
        settings = {**g._sampling(negative_prompt, steps, guidance),
                    "width": g._check_size("width", width) or resolved[0].resolution,
                    "height": g._check_size("height", height) or resolved[0].resolution}
        rows = []
        for ad in resolved:
            text = g.with_trigger(prompt, ad.trigger) if use_trigger else prompt
            row = []
            for s in scales:
                with g.adaptor_pipeline(cache, ad, torch_dtype, s) as pipe:
                    row.append(g._generate(pipe, text, seed, settings, torch_dtype, clip_skip=ad.clip_skip))
            rows.append(row)
    except (g.GenerationError, g.ModelError, ValueError) as e:
        raise ToolError(str(e)) from None
    grid, header = g.draw_grid(rows, [f"scale {s:g}" for s in scales])
    named = labels is not None and len(labels) == len(adaptors)
    labels = list(labels) if named else [Path(a).name or str(a) for a in adaptors]
    grid = _row_labels(grid, header, labels, rows[0][0].height)
    out = Path(out).expanduser()
    y = {"axis": "adaptor", "values": [str(a) for a in adaptors], **({"labels": labels} if named else {})}
    params = {"grid": "xy", "x": {"axis": "lora_scale", "values": list(scales)}, "y": y, "prompt": prompt,
              "triggers": [ad.trigger for ad in resolved] if use_trigger else [], "seed": seed,
              "base": [ad.base.pretrained_model_name_or_path for ad in resolved], **settings}
    cell_dir = out.parent / f"{out.stem}-cells"
    cells = [[str(g.save_png(img, cell_dir / f"r{r}-c{c}.png")) for c, img in enumerate(row)]
             for r, row in enumerate(rows)]
    g.save_png(grid, out, params)
    return {"grid": str(out), "cells": cells, "params": params}
