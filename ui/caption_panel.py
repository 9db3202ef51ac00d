"""The Dataset tab's auto-caption panel: pick a captioner and its options, preview the first few captions,
caption the folder in a subprocess with a live progress bar, cancel, undo.

Widgets come from engine/caption/options.py (the fields of CaptionOptions, their help and choices), so
the panel and the CLI offer the same options under the same names. The run itself is
engine.caption.job.CaptionJob: `python -m engine.caption ... --events` in its own process group.

elem_ids: caption-<option> for each option (caption-captioner, caption-model, caption-mode, ...),
caption-preview, caption-run, caption-cancel, caption-undo, caption-progress (data-done, data-total,
data-status), caption-status, caption-table.
"""
from __future__ import annotations

import html
import time
from dataclasses import MISSING, fields

import gradio as gr

from engine.caption.job import CaptionJob, CaptionState
from engine.caption.options import (CHOICES, DEFAULT_MODELS, GENERAL, GENERATIVE, HELP, TAGGER, CaptionError,
                                    CaptionOptions, check)
from engine.caption.run import PREVIEW_IMAGES

FIELDS = {f.name: f for f in fields(CaptionOptions)}
ORDER = GENERAL + GENERATIVE + TAGGER
TABLE_HEADERS = ["image", "before", "caption"]
POLL_S = 0.5
UNIT_RANGE = ("top_p", "general_threshold", "character_threshold")


def _widget(name: str):
    default = FIELDS[name].default if FIELDS[name].default is not MISSING else None
    label, elem_id = f"{name} — {HELP[name]}", f"caption-{name.replace('_', '-')}"
    if name in CHOICES:
        return gr.Dropdown(list(CHOICES[name]), value=default, label=label, elem_id=elem_id)
    if isinstance(default, bool):
        return gr.Checkbox(value=default, label=label, elem_id=elem_id)
    if name in UNIT_RANGE:
        return gr.Slider(0.0, 1.0, value=default, step=0.01, label=label, elem_id=elem_id)
    if isinstance(default, int):
        return gr.Number(value=default, precision=0, label=label, elem_id=elem_id)
    placeholder = DEFAULT_MODELS[FIELDS["captioner"].default] if name == "model" else None
    return gr.Textbox(value=default, label=label, elem_id=elem_id, placeholder=placeholder)


def options_from(values: list) -> CaptionOptions:
    """The widgets' values (in ORDER) as checked options; CaptionError names a bad one."""
    given = dict(zip(ORDER, values))
    for name, value in given.items():
        if isinstance(FIELDS[name].default, int) and not isinstance(FIELDS[name].default, bool):
            if value is None or value != int(value):
                raise CaptionError(f"{name} = {value!r}: give a whole number")
            given[name] = int(value)
    return CaptionOptions.from_dict(given)


PHASES = {"starting": "starting", "loading": "loading the model", "downloading": "downloading the model",
          "captioning": "captioning"}


def progress_html(s: CaptionState | None) -> str:
    if s is None:
        return "<div id='caption-progress-box' data-status='none'></div>"
    label = "preview" if s.preview else "captioned"
    # while the model loads or downloads, that is what the bar says: "0/4" alone looked like a hang
    what = PHASES.get(s.phase, s.phase) if s.status == "running" else s.status
    return (f"<div id='caption-progress-box' data-done='{s.done}' data-total='{s.total}' "
            f"data-status='{s.status}' data-phase='{html.escape(s.phase)}'><progress value='{s.done}' "
            f"max='{max(s.total, 1)}' style='width:100%'></progress> {label} {s.done}/{s.total} "
            f"({html.escape(what)})</div>")


def status_text(s: CaptionState) -> str:
    if s.status == "running":
        if s.phase == "downloading":
            return f"Downloading `{s.model}` from the Hugging Face Hub (once; it is cached after)…"
        if s.phase == "loading":
            return f"Loading `{s.model}`…"
        return f"Captioning… {s.done}/{s.total}" if s.total else "Starting the captioner…"
    skipped = "".join(f"\n- skipped {m}" for m in s.skipped)
    report = "".join(f"\n\n{line}" for line in s.report)
    if s.status == "failed":
        return f"**Error:** {s.error}{skipped}"
    if s.preview:
        return f"Preview of {len(s.captions)} captions; nothing was written.{skipped}{report}"
    undo = f" The old captions are backed up in `{s.backup}` (Undo restores them)." if s.backup else ""
    if s.status == "cancelled":
        return f"Cancelled: {len(s.captions)} captions were written and kept.{undo}{skipped}"
    return f"Wrote {len(s.captions)} captions.{undo}{skipped}{report}"


def table(s: CaptionState | None) -> dict:
    rows = [[c["image"], c.get("before") or "", c["caption"]] for c in (s.captions if s else [])]
    return {"headers": TABLE_HEADERS, "data": rows}


def build(studio, path, caption_ext, undo_handler) -> list:
    """The panel. `undo_handler(path) -> (anything, status)` is the Dataset tab's bulk Undo (the same
    backups). Returns [(event, status component)] for the tab to chain its gallery reload onto."""
    widgets = {}
    with gr.Accordion("Auto-caption (BLIP, BLIP-2, GIT, Florence-2, WD14 tagger)", open=False):
        for group, names in (("", GENERAL), ("BLIP / BLIP-2 / GIT / Florence-2", GENERATIVE),
                             ("WD14 tagger", TAGGER)):
            with (gr.Accordion(group, open=False) if group else gr.Group()):
                for start in range(0, len(names), 3):
                    with gr.Row():
                        for name in names[start:start + 3]:
                            widgets[name] = _widget(name)
        with gr.Row():
            preview = gr.Button(f"Preview first {PREVIEW_IMAGES}", elem_id="caption-preview")
            run = gr.Button("Caption folder", variant="primary", elem_id="caption-run")
            cancel = gr.Button("Cancel", elem_id="caption-cancel")
            undo = gr.Button("Undo last caption run", elem_id="caption-undo")
        progress = gr.HTML(progress_html(None), elem_id="caption-progress")
        status = gr.Markdown(elem_id="caption-status")
        captions = gr.Dataframe(headers=TABLE_HEADERS, label="Captions", interactive=False, wrap=True,
                                elem_id="caption-table")

    inputs = [path, caption_ext] + [widgets[n] for n in ORDER]

    def follow(preview_n, folder, ext, *values):
        """Start a run and yield (progress, status, table) until it ends."""
        job = studio.caption_job
        if job is not None and job.running():
            yield gr.skip(), "**Error:** a captioning run is already going; cancel it or wait for it.", gr.skip()
            return
        try:
            options = options_from(list(values))
            options.caption_extension = ext  # the Dataset tab's, checked like the panel's own
            check(options)
            if not (folder or "").strip():
                raise CaptionError("type the dataset folder first, then Load")
        except CaptionError as e:
            yield progress_html(None), f"**Error:** {e}", table(None)
            return
        job = CaptionJob(folder.strip(), options, preview=preview_n)
        studio.caption_job = job
        while True:
            s = job.state()
            yield progress_html(s), status_text(s), table(s)
            if s.status != "running":
                return
            time.sleep(POLL_S)

    def run_preview(*values):
        yield from follow(PREVIEW_IMAGES, *values)

    def run_all(*values):
        yield from follow(None, *values)

    def undo_last(folder):
        return table(None), undo_handler(folder)[1]

    def stop():
        job = studio.caption_job
        if job is None or not job.running():
            return "No captioning run is going."
        job.cancel()
        return "Cancelled; the captions written so far are kept."

    widgets["captioner"].change(
        lambda c: gr.update(placeholder=DEFAULT_MODELS[c]), widgets["captioner"], widgets["model"])
    preview.click(run_preview, inputs, [progress, status, captions])
    cancel.click(stop, [], [status], concurrency_limit=None)
    return [(run.click(run_all, inputs, [progress, status, captions]), status),
            (undo.click(undo_last, [path], [captions, status]), status)]
