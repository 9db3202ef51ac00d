"""Utilities tab: the LoRA tools of engine/tools: inspect any LoRA file, resize it (a fixed rank or one of
kohya's dynamic rules), and extract a LoRA from one of this studio's full fine-tune runs. Each runs
`python -m engine.tools ...` in a subprocess (no torch in the app), and writes only under the studio home's
utilities/ folder, by a plain name.

elem_ids: utilities-file, utilities-base, utilities-inspect, utilities-report, utilities-rank, utilities-method,
utilities-param, utilities-name, utilities-resize, utilities-status, utilities-run, utilities-refresh,
utilities-extract-rank, utilities-extract-name, utilities-extract, utilities-extract-status.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import gradio as gr

from engine.paths import PROJECT_ROOT, UnsafePath, inside, safe_child
from ui.studio import Studio

METHODS = ("fixed rank", "sv_ratio", "sv_fro", "sv_cumulative")
TIMEOUT_S = 600


def out_dir(studio: Studio) -> Path:
    return studio.home / "utilities"


def _lora(file: str | None) -> Path:
    """A LoRA .safetensors file anywhere on this machine (read only), or a message saying what to give."""
    text = (file or "").strip()
    if not text:
        raise ValueError("give a LoRA .safetensors file")
    path = Path(text).expanduser()
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        raise ValueError(f"{path} is not a .safetensors file; give a LoRA file (kohya, diffusers, ComfyUI, LyCORIS)")
    return path


def _tools(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "engine.tools", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise ValueError(lines[-1].removeprefix("error: ") if lines else f"the tool exited with {proc.returncode}")
    return proc.stdout.strip()


def _shown(handler):
    """A handler whose refusals (a bad value, a path outside its folder, a tool's error line) read as one line."""
    @functools.wraps(handler)
    def wrapper(*args):
        try:
            return handler(*args)
        except UnsafePath as e:  # a ValueError too: the name the user typed climbs out of its folder
            return f"⚠ name: {e}"
        except (ValueError, subprocess.TimeoutExpired) as e:
            return f"⚠ {e}"
    return wrapper


@_shown
def inspect(file, base) -> str:
    args = ["inspect", str(_lora(file))] + (["--base", base.strip()] if base and base.strip() else [])
    return _tools(*args)


@_shown
def resize(studio: Studio, file, base, rank, method, param, name) -> str:
    src = _lora(file)
    out = safe_child(out_dir(studio), f"{(name or '').strip()}.safetensors")
    if rank is None or int(rank) < 1:
        raise ValueError("rank: a whole number of at least 1")
    args = ["resize", str(src), "--rank", str(int(rank)), "--out", str(out)]
    if method in METHODS[1:]:
        args += ["--method", method, "--param", str(param)]
    elif method not in METHODS:
        raise ValueError(f"method {method!r}: one of {', '.join(METHODS)}")
    if base and base.strip():
        args += ["--base", base.strip()]
    out.parent.mkdir(parents=True, exist_ok=True)
    return f"Wrote {_tools(*args)}"


def full_runs(studio: Studio) -> list[str]:
    """Names of the finished full fine-tune runs under runs/ (a whole trained model in diffusers/)."""
    found = []
    for config in sorted(studio.runs_dir.glob("*/config.toml")):
        try:
            data = tomllib.loads(config.read_text())
        except (OSError, ValueError):
            continue
        tables = [data, *(t for t in data.values() if isinstance(t, dict))]  # config.toml groups its fields
        method = next((t["method"] for t in tables if "method" in t), None)
        if method == "full" and (config.parent / "diffusers" / "model_index.json").is_file():
            found.append(config.parent.name)
    return found


@_shown
def extract(studio: Studio, run, rank, name) -> str:
    if not run or run not in full_runs(studio):
        raise ValueError(f"{run!r} is not a finished full fine-tune run in {studio.runs_dir}; press Refresh runs")
    folder = inside(studio.runs_dir, run, "run")
    out = safe_child(out_dir(studio), f"{(name or '').strip()}.safetensors")
    if rank is None or int(rank) < 1:
        raise ValueError("rank: a whole number of at least 1")
    out.parent.mkdir(parents=True, exist_ok=True)
    return f"Wrote {_tools('extract', str(folder), '--rank', str(int(rank)), '--out', str(out))}"


def build(studio: Studio) -> None:
    gr.Markdown("LoRA tools on any LoRA file (kohya, diffusers, ComfyUI, LyCORIS). The command line does more: "
                "`python -m engine.tools --help` (convert, merge, extract, publish).")
    with gr.Row():
        file = gr.Textbox(label="LoRA .safetensors file", elem_id="utilities-file", scale=3)
        base = gr.Textbox(label="Base model (optional: to check keys, or for a non-standard model)",
                          elem_id="utilities-base", scale=2)
    inspect_btn = gr.Button("Inspect", elem_id="utilities-inspect")
    report = gr.Textbox(label="Report", lines=12, interactive=False, elem_id="utilities-report")
    gr.Markdown("### Resize: a lower rank by SVD")
    with gr.Row():
        rank = gr.Number(8, precision=0, minimum=1, maximum=4096, label="New rank (the most any module keeps)",
                         elem_id="utilities-rank")
        method = gr.Dropdown(list(METHODS), value=METHODS[0], label="Rank per module",
                             elem_id="utilities-method")
        param = gr.Number(0.9, minimum=0, maximum=1000, label="Rule's number (sv_ratio: ratio; sv_fro, "
                          "sv_cumulative: fraction kept)", elem_id="utilities-param")
        name = gr.Textbox("resized", label=f"Output name (written to {out_dir(studio)}/NAME.safetensors)",
                          elem_id="utilities-name")
    resize_btn = gr.Button("Resize", variant="primary", elem_id="utilities-resize")
    status = gr.Textbox(label="Result", lines=3, interactive=False, elem_id="utilities-status")
    gr.Markdown("### Extract a LoRA from a full fine-tune run (as kohya's extract_lora_from_models.py)")
    with gr.Row():
        run = gr.Dropdown(full_runs(studio), value=None, label="Full fine-tune run", elem_id="utilities-run")
        refresh = gr.Button("Refresh runs", elem_id="utilities-refresh", scale=0)
        ex_rank = gr.Number(64, precision=0, minimum=1, maximum=4096, label="Rank", elem_id="utilities-extract-rank")
        ex_name = gr.Textbox("extracted", label="Output name (in utilities/)", elem_id="utilities-extract-name")
    extract_btn = gr.Button("Extract LoRA", variant="primary", elem_id="utilities-extract")
    ex_status = gr.Textbox(label="Result", lines=3, interactive=False, elem_id="utilities-extract-status")
    refresh.click(lambda: gr.update(choices=full_runs(studio)), [], [run], api_name="utilities_runs")
    extract_btn.click(lambda *a: extract(studio, *a), [run, ex_rank, ex_name], [ex_status],
                      api_name="utilities_extract")
    inspect_btn.click(inspect, [file, base], [report], api_name="utilities_inspect")
    resize_btn.click(lambda *a: resize(studio, *a), [file, base, rank, method, param, name], [status],
                     api_name="utilities_resize")
