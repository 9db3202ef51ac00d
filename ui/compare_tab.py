"""The Compare tab: the same seed through base | adaptor | adaptor + trigger word, a row per prompt; and
img2img / inpainting with the adaptor. Generation runs in the engine's worker process, which keeps the
base model loaded between requests.

elem_ids: compare-run, compare-lora-file, compare-base, compare-prompts, compare-negative, compare-seed,
compare-steps, compare-guidance, compare-width, compare-height, compare-scale, compare-generate,
compare-status, compare-grid, compare-download, compare-editor, compare-strength, compare-img2img,
compare-inpaint, compare-edit-result.
"""
from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from engine.events import iter_events
from engine.paths import inside
from ui.studio import Studio


MAX_SIDE = 4096  # pixels; gradio refuses larger widths and heights before generate() runs


def finished_runs(runs_dir: Path) -> list[Path]:
    """Run folders whose training finished (a `done` event), newest first."""
    found = []
    for events in runs_dir.glob("*/events.jsonl"):
        if any(e["type"] == "done" for e in iter_events(events)):
            found.append(events.parent)
    return sorted(found, key=lambda p: (p / "events.jsonl").stat().st_mtime, reverse=True)


def _adaptor_and_base(runs_dir: Path, run: str | None, lora_file: str | None,
                      base: str | None) -> tuple[str, str | None]:
    """(adaptor, base): a LoRA .safetensors file anywhere (the user's ComfyUI folder, say), or a finished
    run inside runs_dir; anything else is refused before the worker opens it."""
    if lora_file and lora_file.strip():
        path = Path(lora_file.strip()).expanduser()
        if path.suffix.lower() != ".safetensors" or not path.is_file():
            raise ValueError(f"{path} is not a .safetensors file; give a LoRA file (kohya or diffusers format)")
        if not base or not base.strip():
            raise ValueError(f"{path} is a bare LoRA file: give the base model it was trained on")
        return str(path), base.strip()
    if not run:
        raise ValueError("pick a finished run, or give a LoRA .safetensors file and its base model")
    folder = inside(runs_dir, Path(run).expanduser(), "run")
    if folder not in finished_runs(runs_dir):
        raise ValueError(f"{run} is not a finished run in {runs_dir}; press Refresh runs and pick one")
    return str(folder), (base.strip() if base and base.strip() else None)


def _out_dir(studio: Studio) -> Path:
    folder = studio.runs_dir / ".compare"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _worker(studio: Studio):
    if studio.worker is None:
        from engine.gen_worker import GenerationWorker  # no torch in the app process
        studio.worker = GenerationWorker(log_path=_out_dir(studio) / "worker.log")
    return studio.worker


def _size(v) -> int | None:
    return int(v) if v not in (None, "", 0) else None


def run_compare(studio: Studio, run, lora_file, base, prompts_text, negative, seed, steps, guidance, width,
                height, scale):
    prompts = [p.strip() for p in (prompts_text or "").splitlines() if p.strip()]
    if not prompts:
        raise ValueError("write at least one prompt (one per line)")
    adaptor, base = _adaptor_and_base(studio.runs_dir, run, lora_file, base)
    out = _out_dir(studio) / f"grid-{time.strftime('%Y%m%d-%H%M%S')}.png"
    result = _worker(studio).request(
        "compare", adaptor=adaptor, base=base, prompts=prompts, negative_prompt=negative or "", seed=int(seed),
        steps=int(steps), guidance=float(guidance), width=_size(width), height=_size(height),
        lora_scale=float(scale), out=str(out))
    return result


def _editor_to_files(editor_value, folder: Path) -> tuple[Path, Path]:
    """The uploaded image and the painted mask (white = repaint) as PNG files for the worker."""
    if not editor_value or editor_value.get("background") is None:
        raise ValueError("upload an image into the editor first")
    background = np.asarray(editor_value["background"])
    image = Image.fromarray(background[..., :3].astype(np.uint8))
    mask = np.zeros(background.shape[:2], dtype=np.uint8)
    for layer in editor_value.get("layers") or []:
        layer = np.asarray(layer)
        if layer.ndim == 3 and layer.shape[2] == 4 and layer.shape[:2] == mask.shape:
            mask[layer[..., 3] > 0] = 255
    stamp = time.strftime("%Y%m%d-%H%M%S")
    image_path, mask_path = folder / f"input-{stamp}.png", folder / f"mask-{stamp}.png"
    image.save(image_path)
    Image.fromarray(mask).save(mask_path)
    return image_path, mask_path


def build(studio: Studio) -> None:
    runs = [str(p) for p in finished_runs(studio.runs_dir)]
    with gr.Row():
        run_box = gr.Dropdown(runs, value=runs[0] if runs else None, label="Finished run", allow_custom_value=True,
                              elem_id="compare-run", scale=3)
        refresh_btn = gr.Button("Refresh runs", scale=1)
    with gr.Accordion("…or any LoRA file", open=False):
        with gr.Row():
            lora_file = gr.Textbox(label="LoRA .safetensors file (kohya or diffusers)", elem_id="compare-lora-file")
            base_box = gr.Textbox(label="Base model (the run's own base when empty)", elem_id="compare-base")
    prompts = gr.Textbox(lines=3, label="Prompts (one per line)", elem_id="compare-prompts",
                         value=studio.default_prompts)
    negative = gr.Textbox(label="Negative prompt", elem_id="compare-negative")
    with gr.Row():
        seed = gr.Number(0, precision=0, minimum=0, maximum=2**32 - 1, label="Seed", elem_id="compare-seed")
        steps = gr.Number(20, precision=0, minimum=1, maximum=200, label="Steps", elem_id="compare-steps")
        guidance = gr.Number(7.5, minimum=0, maximum=50, label="Guidance", elem_id="compare-guidance")
        width = gr.Number(0, precision=0, minimum=0, maximum=MAX_SIDE, label="Width (0: the run's resolution)",
                          elem_id="compare-width")
        height = gr.Number(0, precision=0, minimum=0, maximum=MAX_SIDE, label="Height (0: the same)",
                           elem_id="compare-height")
        scale = gr.Slider(0, 2, value=1.0, step=0.05, label="LoRA scale", elem_id="compare-scale")
    generate_btn = gr.Button("Generate comparison", variant="primary", elem_id="compare-generate")
    status = gr.Markdown("", elem_id="compare-status")
    grid = gr.Image(label="base | adaptor | adaptor + trigger word", type="filepath", elem_id="compare-grid",
                    interactive=False)
    download = gr.File(label="Grid PNG", elem_id="compare-download")

    with gr.Accordion("img2img and inpainting with the adaptor", open=False):
        editor = gr.ImageEditor(label="Upload an image; paint the area to repaint (inpainting)", type="numpy",
                                elem_id="compare-editor")
        strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength", elem_id="compare-strength")
        with gr.Row():
            img2img_btn = gr.Button("img2img", elem_id="compare-img2img")
            inpaint_btn = gr.Button("Inpaint", elem_id="compare-inpaint")
        edit_result = gr.Image(label="Result", type="filepath", interactive=False, elem_id="compare-edit-result")

    compare_inputs = [run_box, lora_file, base_box, prompts, negative, seed, steps, guidance, width, height, scale]

    def generate(*args):
        try:
            result = run_compare(studio, *args)
        except Exception as e:  # the worker's message names the file or value; show it, never a trace
            return None, None, f"⚠ {e}"
        trigger = result.get("trigger") or "(none: no third column)"
        columns = " | ".join(result.get("columns") or [])
        return (result["grid"], result["grid"],
                f"{result['rows']} prompts x {result['cols']} columns ({columns}), seed {int(args[5])}, "
                f"trigger word: **{trigger}**; made in {result.get('seconds', 0):.1f} s.")

    def edit(op, editor_value, run, lora_file, base, prompts_text, negative, seed, steps, guidance, scale, strength_v):
        try:
            adaptor, base_id = _adaptor_and_base(studio.runs_dir, run, lora_file, base)
            image_path, mask_path = _editor_to_files(editor_value, _out_dir(studio))
            prompt = next((p.strip() for p in (prompts_text or "").splitlines() if p.strip()), "")
            params = dict(adaptor=adaptor, base=base_id, prompt=prompt, negative_prompt=negative or "",
                          seed=int(seed), steps=int(steps), guidance=float(guidance), lora_scale=float(scale),
                          strength=float(strength_v), image=str(image_path),
                          out=str(_out_dir(studio) / f"{op}-{time.strftime('%Y%m%d-%H%M%S')}.png"))
            if op == "inpaint":
                params["mask"] = str(mask_path)
            result = _worker(studio).request(op, **params)
        except Exception as e:
            return None, f"⚠ {e}"
        return result["image"], f"{op} done."

    edit_inputs = [editor, run_box, lora_file, base_box, prompts, negative, seed, steps, guidance, scale, strength]
    generate_btn.click(generate, compare_inputs, [grid, download, status])
    img2img_btn.click(lambda *a: edit("img2img", *a), edit_inputs, [edit_result, status])
    inpaint_btn.click(lambda *a: edit("inpaint", *a), edit_inputs, [edit_result, status])

    def refresh():
        found = [str(p) for p in finished_runs(studio.runs_dir)]
        return gr.update(choices=found, value=found[0] if found else None)

    refresh_btn.click(refresh, [], [run_box])
    studio.shared["compare_refresh"] = (refresh, run_box)
