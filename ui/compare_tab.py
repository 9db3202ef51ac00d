"""The Compare tab: the same seed through base | adaptor | adaptor + trigger word, a row per prompt, filled in
cell by cell as the worker draws it; and img2img / inpainting with the adaptor. Generation runs in the engine's
worker process, started with the app (start_worker) and kept warm: it keeps the base model loaded between
requests.

elem_ids: compare-run, compare-lora-accordion, compare-lora-file, compare-base, compare-prompts,
compare-negative, compare-seed, compare-steps, compare-guidance, compare-width, compare-height, compare-scale,
compare-generate, compare-status, compare-grid, compare-download, compare-editor, compare-strength,
compare-use-trigger, compare-img2img, compare-inpaint, compare-edit-status, compare-edit-result; the X/Y grid's
are in ui/compare_xy.py.
"""
from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from engine.config import FIELD_BY_NAME
from engine.events import iter_events
from engine.paths import inside
from ui.compare_grid import GridProgress
from ui.studio import Studio


MAX_SIDE = 4096  # pixels; gradio refuses larger widths and heights before generate() runs
# seconds between two updates of the grid while a cell draws (a finished cell shows at once): the page redraws
# the whole grid per update, and at one update per 0.15 s the browser fell 8 s behind the worker on 2 busy cores
UPDATE_S = 0.5


def finished_runs(runs_dir: Path) -> list[Path]:
    """Run folders whose training finished (a `done` event), newest first."""
    found = []
    for events in runs_dir.glob("*/events.jsonl"):
        if any(e["type"] == "done" for e in iter_events(events)):
            found.append(events.parent)
    return sorted(found, key=lambda p: (p / "events.jsonl").stat().st_mtime, reverse=True)


def run_sampling(runs_dir: Path, run: str | None) -> tuple[int, float] | None:
    """(steps, guidance) the run drew its training samples with, so Compare draws the same pictures (the toy
    presets sample builtin:toy at guidance 4; a run that does not say has the schema's defaults). None when
    `run` names no readable run inside runs_dir: nothing outside it is read."""
    from engine.adaptor_ref import run_settings
    from engine.generate import GenerationError

    if not run:
        return None
    try:
        s = run_settings(inside(runs_dir, Path(run).expanduser(), "run"))
    except (ValueError, GenerationError):
        return None
    return int(s["num_inference_steps"]), float(s["guidance_scale"])


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


def start_worker(studio: Studio) -> None:
    """Start the worker now, in the background, so that its interpreter, torch and diffusers are loaded before
    the first comparison (they were most of its wait). It loads no model: no GPU memory is taken from training."""
    worker = _worker(studio)

    def ping():
        try:
            worker.request("ping")
        except Exception:  # the first real request starts it again and says what went wrong
            pass

    threading.Thread(target=ping, name="warm-generation-worker", daemon=True).start()


def editor_fit(editor_value):
    """After an upload: the brush sized to the image, the canvas kept at the image's own size (a brush update
    alone redraws the canvas at Gradio's default 800 px). The note says when painting can start."""
    background = (editor_value or {}).get("background")
    if background is None:
        return gr.skip(), gr.skip()
    h, w = np.asarray(background).shape[:2]
    brush = brush_for(editor_value)
    note = (f"Image {w}x{h}: paint the area to repaint with the brush ({brush.default_size} px), then press "
            "Inpaint; or press img2img.")
    return gr.update(brush=brush, canvas_size=(int(w), int(h))), note


def brush_for(editor_value) -> gr.Brush:
    """A brush about 1/12 of the image's shorter side (Gradio's "auto" is 25 px: most of a 64 px image)."""
    background = (editor_value or {}).get("background")
    side = min(np.asarray(background).shape[:2]) if background is not None else 512
    return gr.Brush(default_size=max(1, round(side / 12)))


def _size(v) -> int | None:
    return int(v) if v not in (None, "", 0) else None


def compare_request(studio: Studio, run, lora_file, base, prompts_text, negative, seed, steps, guidance, width,
                    height, scale) -> dict:
    """The worker's compare parameters, checked; ValueError says what to fix."""
    prompts = [p.strip() for p in (prompts_text or "").splitlines() if p.strip()]
    if not prompts:
        raise ValueError("write at least one prompt (one per line)")
    adaptor, base = _adaptor_and_base(studio.runs_dir, run, lora_file, base)
    out = _out_dir(studio) / f"grid-{time.strftime('%Y%m%d-%H%M%S')}.png"
    return dict(adaptor=adaptor, base=base, prompts=prompts, negative_prompt=negative or "", seed=int(seed),
                steps=int(steps), guidance=float(guidance), width=_size(width), height=_size(height),
                lora_scale=float(scale), out=str(out))


def compare_live(studio: Studio, *args):
    """Yields (grid progress, result or None, error or None) as the worker reports, the last with the result."""
    params = compare_request(studio, *args)
    events: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = _worker(studio).request("compare", on_progress=events.put, **params)
        except Exception as e:  # the worker's message names the file or value
            outcome["error"] = e
        finally:
            events.put(None)

    threading.Thread(target=work, name="compare", daemon=True).start()
    grid = GridProgress()
    finished = False
    while not finished:
        event, until = events.get(), time.monotonic() + UPDATE_S
        while True:  # the steps of UPDATE_S in one update, up to a finished cell or the end
            if event is None:
                finished = True
                break
            grid.apply(event)
            if "done" in event or (left := until - time.monotonic()) <= 0:
                break
            try:
                event = events.get(timeout=left)
            except queue.Empty:
                break
        if not finished:
            yield grid, None, None
    yield grid, outcome.get("result"), outcome.get("error")


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


def _done_text(result: dict, seed) -> str:
    trigger = result.get("trigger") or "(none: no third column)"
    columns = " | ".join(result.get("columns") or [])
    return (f"{result['rows']} prompts x {result['cols']} columns ({columns}), seed {int(seed)}, "
            f"trigger word: **{trigger}**; made in {result.get('seconds', 0):.1f} s.")


def build(studio: Studio) -> None:
    runs = [str(p) for p in finished_runs(studio.runs_dir)]
    with gr.Row():
        run_box = gr.Dropdown(runs, value=runs[0] if runs else None, label="Finished run", allow_custom_value=True,
                              elem_id="compare-run", scale=3)
        refresh_btn = gr.Button("Refresh runs", scale=1)
    with gr.Accordion("…or any LoRA file", open=False, elem_id="compare-lora-accordion") as lora_accordion:
        with gr.Row():
            lora_file = gr.Textbox(label="LoRA .safetensors file (kohya or diffusers)", elem_id="compare-lora-file")
            base_box = gr.Textbox(label="Base model (the run's own base when empty)", elem_id="compare-base")
    prompts = gr.Textbox(lines=3, label="Prompts (one per line)", elem_id="compare-prompts",
                         value=studio.default_prompts)
    negative = gr.Textbox(label="Negative prompt", elem_id="compare-negative")
    first_steps, first_guidance = run_sampling(studio.runs_dir, runs[0] if runs else None) or (
        FIELD_BY_NAME["num_inference_steps"].default, FIELD_BY_NAME["guidance_scale"].default)
    with gr.Row():
        seed = gr.Number(0, precision=0, minimum=0, maximum=2**32 - 1, label="Seed", elem_id="compare-seed")
        steps = gr.Number(first_steps, precision=0, minimum=1, maximum=200, label="Steps", elem_id="compare-steps")
        guidance = gr.Number(first_guidance, minimum=0, maximum=50, label="Guidance", elem_id="compare-guidance")
        width = gr.Number(0, precision=0, minimum=0, maximum=MAX_SIDE, label="Width (0: the run's resolution)",
                          elem_id="compare-width")
        height = gr.Number(0, precision=0, minimum=0, maximum=MAX_SIDE, label="Height (0: the same)",
                           elem_id="compare-height")
        scale = gr.Slider(0, 2, value=1.0, step=0.05, label="LoRA scale", elem_id="compare-scale")
    with gr.Row(equal_height=True):
        generate_btn = gr.Button("Generate comparison", variant="primary", elem_id="compare-generate", scale=1)
        status = gr.Markdown("", elem_id="compare-status")
    grid = gr.HTML("", elem_id="compare-grid")
    download = gr.File(label="Grid PNG", elem_id="compare-download")
    from ui import compare_xy  # here: it imports this module's helpers
    compare_xy.build(studio, run_box, negative, guidance)

    with gr.Accordion("img2img and inpainting with the adaptor", open=False):
        editor = gr.ImageEditor(label="Upload an image; paint the area to repaint (inpainting)", type="numpy",
                                elem_id="compare-editor", brush=brush_for(None))
        with gr.Row():
            strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Strength", elem_id="compare-strength")
            use_trigger = gr.Checkbox(True, label="Put the trigger word in front of the prompt",
                                      elem_id="compare-use-trigger")
        with gr.Row(equal_height=True):
            img2img_btn = gr.Button("img2img", elem_id="compare-img2img", scale=0)
            inpaint_btn = gr.Button("Inpaint", elem_id="compare-inpaint", scale=0)
            edit_status = gr.Markdown("", elem_id="compare-edit-status")
        edit_result = gr.Image(label="Result", type="filepath", interactive=False, elem_id="compare-edit-result")

    compare_inputs = [run_box, lora_file, base_box, prompts, negative, seed, steps, guidance, width, height, scale]

    def generate(*args):
        shown = {}  # what was last sent: an unchanged grid or status line is not sent again
        def changed(key, value):
            same, shown[key] = shown.get(key) == value, value
            return gr.skip() if same else value

        try:
            for progress, result, error in compare_live(studio, *args):
                grid_update = changed("grid", progress.html())
                if error is not None:
                    yield grid_update, None, f"⚠ {error}"
                elif result is not None:
                    yield grid_update, result["grid"], _done_text(result, args[5])
                else:
                    yield grid_update, gr.skip(), changed("status", progress.status())
        except ValueError as e:  # bad input, found before the worker is asked
            yield gr.skip(), gr.skip(), f"⚠ {e}"

    def edit(op, editor_value, run, lora_file, base, prompts_text, negative, seed, steps, guidance, scale,
             strength_v, trigger_v):
        try:
            adaptor, base_id = _adaptor_and_base(studio.runs_dir, run, lora_file, base)
            image_path, mask_path = _editor_to_files(editor_value, _out_dir(studio))
            prompt = next((p.strip() for p in (prompts_text or "").splitlines() if p.strip()), "")
            params = dict(adaptor=adaptor, base=base_id, prompt=prompt, negative_prompt=negative or "",
                          seed=int(seed), steps=int(steps), guidance=float(guidance), lora_scale=float(scale),
                          strength=float(strength_v), image=str(image_path), use_trigger=bool(trigger_v),
                          out=str(_out_dir(studio) / f"{op}-{time.strftime('%Y%m%d-%H%M%S')}.png"))
            if op == "inpaint":
                if not np.asarray(Image.open(mask_path)).any():  # nothing painted: nothing would change
                    raise ValueError("paint the area to repaint with the brush first, then press Inpaint")
                params["mask"] = str(mask_path)
            result = _worker(studio).request(op, **params)
        except Exception as e:
            return None, f"⚠ {e}"
        return result["image"], f"{op} done, prompt: “{result['prompt']}”."

    edit_inputs = [editor, run_box, lora_file, base_box, prompts, negative, seed, steps, guidance, scale, strength,
                   use_trigger]
    generate_btn.click(generate, compare_inputs, [grid, download, status])
    img2img_btn.click(lambda *a: edit("img2img", *a), edit_inputs, [edit_result, edit_status])
    inpaint_btn.click(lambda *a: edit("inpaint", *a), edit_inputs, [edit_result, edit_status])
    editor.upload(editor_fit, [editor], [editor, edit_status])

    def refresh():
        """The finished runs, the newest picked, with its sample settings in the same answer: a chained
        run_box.change could land after a quick Generate click, which then drew at the old guidance."""
        found = [str(p) for p in finished_runs(studio.runs_dir)]
        first = found[0] if found else None
        return (gr.update(choices=found, value=first), *(run_sampling(studio.runs_dir, first)
                                                          or (gr.skip(), gr.skip())))

    def pick_file(path: str, base: str, note: str):
        """Another tab's "compare this one": the file and its base in the boxes, the accordion open."""
        return gr.update(open=True), path, base, note

    refresh_btn.click(refresh, [], [run_box, steps, guidance])

    def follow_run(run):
        """The picked run's sample settings; anything else leaves the boxes as they are."""
        return run_sampling(studio.runs_dir, run) or (gr.skip(), gr.skip())

    run_box.change(follow_run, [run_box], [steps, guidance])
    studio.shared["compare_refresh"] = (refresh, [run_box, steps, guidance])
    studio.shared["compare_pick"] = (pick_file, [lora_accordion, lora_file, base_box, status])
