"""The Compare tab's X/Y grid (AUTOMATIC1111's X/Y plot): a column per LoRA scale, a row per adaptor of the
picked run (its final adaptor and its checkpoints and saved intermediate adaptors), one prompt and seed. The
warm generation worker draws it with engine.tools.grid.xy_grid (op "xy"), so each cell is the image Compare
draws; the PNG lands in runs/.compare/ with its settings as JSON in its `parameters` text chunk.

Adaptors are picked by key (final, checkpoint-N, saved-N), never by path: the path is looked up in the run.

elem_ids: compare-xy-accordion, compare-xy-scales, compare-xy-adaptors, compare-xy-prompt, compare-xy-seed,
compare-xy-steps, compare-xy-width, compare-xy-height, compare-xy-generate, compare-xy-status, compare-xy-image.
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

import gradio as gr

from engine.paths import inside
from ui import run_panels
from ui.compare_tab import MAX_SIDE, _out_dir, _size, _worker, finished_runs
from ui.studio import Studio

MAX_AXIS = 8  # values per axis: at most 8 x 8 cells
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _run(runs_dir: Path, run: str | None) -> Path:
    if not run:
        raise ValueError("pick a finished run above (Finished run)")
    folder = inside(runs_dir, Path(run).expanduser(), "run")
    if folder not in finished_runs(runs_dir):
        raise ValueError(f"{run} is not a finished run in {runs_dir}; press Refresh runs and pick one")
    return folder


def run_adaptors(folder: Path) -> dict[str, tuple[str, Path]]:
    """key -> (row label, adaptor) of a finished run: the run itself (its final adaptor), then the checkpoints
    and saved adaptors that hold a LoRA file (other methods' intermediates cannot be applied as one)."""
    settings = run_panels.settings_from(folder / "config.toml")
    found = {"final": ("final", folder)}
    if settings.get("method") in run_panels.COMPARABLE_METHODS and settings.get("lora_type") == "lora":
        ckpts = folder / "checkpoints"
        steps = {p: int(m[1]) for p in (ckpts.iterdir() if ckpts.is_dir() else ())
                 if p.is_dir() and (m := _CHECKPOINT.match(p.name))}
        for item in run_panels.intermediates_in(folder, steps, settings):
            if item.lora_file is not None:
                key = f"{item.kind}-{item.step}"
                found[key] = (f"{item.kind} step {item.step}", item.lora_file)
    return found


def _choices(studio: Studio, run) -> list[tuple[str, str]] | None:
    """(label, key) of the run's adaptors; None when run is not a finished run of this studio."""
    try:
        found = run_adaptors(_run(studio.runs_dir, run))
    except ValueError:
        return None
    return [(label, key) for key, (label, _) in found.items()]


def parse_scales(text: str | None) -> list[float]:
    values = []
    for part in (text or "").replace(";", ",").split(","):
        if not part.strip():
            continue
        try:
            value = float(part)
        except ValueError:
            raise ValueError(f"scales: {part.strip()!r} is not a number; write them as 0.5, 1") from None
        if not math.isfinite(value) or not -10 <= value <= 10:
            raise ValueError(f"scales: {part.strip()} must be a number from -10 to 10")
        values.append(value)
    if not values:
        raise ValueError("scales: write at least one LoRA scale, as 0.5, 1")
    if len(values) > MAX_AXIS:
        raise ValueError(f"scales: at most {MAX_AXIS} (got {len(values)})")
    return values


def xy_request(studio: Studio, run, picked, scales_text, prompt, negative, guidance, seed, steps, width,
               height) -> dict:
    """The worker's xy parameters, checked; ValueError says what to fix."""
    scales = parse_scales(scales_text)
    folder = _run(studio.runs_dir, run)
    available = run_adaptors(folder)
    picked = [picked] if isinstance(picked, str) else list(picked or [])
    unknown = [str(k) for k in picked if k not in available]
    if unknown:
        raise ValueError(f"adaptors: {', '.join(unknown)} not in {folder.name}; pick them from the list")
    if not picked:
        raise ValueError("adaptors: pick at least one (the final adaptor, a checkpoint)")
    if len(picked) > MAX_AXIS:
        raise ValueError(f"adaptors: at most {MAX_AXIS} (got {len(picked)})")
    if not (prompt or "").strip():
        raise ValueError("write a prompt")
    settings = run_panels.settings_from(folder / "config.toml")
    size = settings.get("resolution")  # bare intermediate files carry no resolution of their own
    out = _out_dir(studio) / f"xy-{time.strftime('%Y%m%d-%H%M%S')}.png"
    return dict(adaptors=[str(available[k][1]) for k in picked], labels=[available[k][0] for k in picked],
                scales=scales, prompt=prompt.strip(), base=settings.get("pretrained_model_name_or_path") or None,
                negative_prompt=negative or "", guidance=float(guidance), seed=int(seed), steps=int(steps),
                width=_size(width) or size, height=_size(height) or _size(width) or size, out=str(out))


def build(studio: Studio, run_box, negative, guidance) -> None:
    with gr.Accordion("X/Y grid: LoRA scales x the run's checkpoints", open=False, elem_id="compare-xy-accordion"):
        gr.Markdown("A column per scale, a row per adaptor of the finished run picked above; the negative prompt "
                    "and guidance are those above.")
        with gr.Row():
            scales = gr.Textbox("0.5, 1", label=f"X: LoRA scales (comma-separated, at most {MAX_AXIS})",
                                elem_id="compare-xy-scales")
            # custom values allowed: the choices change with the run, and xy_request checks each key against it
            adaptors = gr.Dropdown(_choices(studio, run_box.value) or [], value=[], multiselect=True,
                                   allow_custom_value=True, elem_id="compare-xy-adaptors",
                                   label=f"Y: adaptors of the run (at most {MAX_AXIS})")
        prompt = gr.Textbox(studio.default_prompts.splitlines()[0] if studio.default_prompts else "",
                            label="Prompt", elem_id="compare-xy-prompt")
        with gr.Row():
            seed = gr.Number(0, precision=0, minimum=0, maximum=2**32 - 1, label="Seed", elem_id="compare-xy-seed")
            steps = gr.Number(20, precision=0, minimum=1, maximum=200, label="Steps", elem_id="compare-xy-steps")
            width = gr.Number(0, precision=0, minimum=0, maximum=MAX_SIDE, label="Width (0: the run's resolution)",
                              elem_id="compare-xy-width")
            height = gr.Number(0, precision=0, minimum=0, maximum=MAX_SIDE, label="Height (0: the same)",
                               elem_id="compare-xy-height")
        with gr.Row(equal_height=True):
            generate_btn = gr.Button("Generate X/Y grid", elem_id="compare-xy-generate", scale=0)
            status = gr.Markdown("", elem_id="compare-xy-status")
        image = gr.Image(label="X/Y grid", type="filepath", interactive=False, elem_id="compare-xy-image")

    def choices(run):
        found = _choices(studio, run)
        return gr.update(choices=[]) if found is None else gr.update(choices=found, value=[])

    def generate(*args):
        try:
            params = xy_request(studio, *args)
        except ValueError as e:  # bad input, found before the worker is asked
            yield gr.skip(), f"⚠ {e}"
            return
        cells = len(params["adaptors"]) * len(params["scales"])
        yield gr.skip(), f"Generating {len(params['adaptors'])} x {len(params['scales'])} = {cells} cells…"
        try:
            result = _worker(studio).request("xy", **params)
        except ValueError as e:  # the worker's message names the file or value
            yield gr.skip(), f"⚠ {e}"
            return
        yield result["grid"], (f"{len(params['scales'])} scales x {len(params['adaptors'])} adaptors in "
                               f"{result.get('seconds', 0):.1f} s: `{Path(result['grid']).name}`, its settings in "
                               "the PNG's text chunk.")

    run_box.change(choices, [run_box], [adaptors])
    generate_btn.click(generate, [run_box, adaptors, scales, prompt, negative, guidance, seed, steps, width, height],
                       [image, status])
