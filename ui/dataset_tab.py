"""The Dataset tab: open or upload a folder of images, edit captions one by one or in bulk (with preview
and undo), and check the folder before training. The work is done by engine.data.caption_files, checks,
uploads and thumbnails; this module only wires them to components.

Components (elem_id):
  dataset-path            folder typed in (shared as studio.shared["dataset_path"]; the Training tab follows it)
  dataset-caption-ext     caption file extension (engine.paths.CAPTION_EXTENSIONS; .txt first)
  dataset-load            load the folder (Enter in dataset-path does too)
  dataset-status          what the last action did, or what went wrong
  dataset-gallery         images with their captions; click one to edit its caption
  dataset-selected        the clicked image (path in its folder)
  dataset-selected-folder the folder it came from (hidden): Save writes there, whatever is loaded since
  dataset-caption-stamp   what its caption file held when it was opened (hidden; engine caption_stamp)
  dataset-caption         its caption
  dataset-caption-save    write the caption to its sidecar file (asks first if the file changed on disk)
  dataset-caption-overwrite  shown when it did: write anyway
  dataset-bulk-op         add trigger word | add prefix | add suffix | find and replace | remove tag
  dataset-bulk-text       the trigger word, prefix, suffix, text to find, or tag
  dataset-bulk-replace    replacement (find and replace)
  dataset-bulk-preview    show what would change -> dataset-bulk-table (file, before, after)
  dataset-bulk-apply      back up, then write
  dataset-bulk-undo       restore the newest backup
  dataset-bulk-table      the preview / what changed
  dataset-min-side        tiny-image threshold in pixels (shorter side)
  dataset-checks-run      run the checks again
  dataset-checks          problems: file, problem, detail
  dataset-summary         size summary: measure, value
  dataset-tags            tag and word frequency: kind, text, images
  dataset-upload          images, caption files or zips
  dataset-upload-name     name of the new folder under datasets/
  dataset-upload-create   make the folder and load it
  caption-*               the auto-caption panel (ui/caption_panel.py)
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from engine.data import caption_files, checks, thumbnails, uploads
from engine.data.items import DataError
from engine.paths import CAPTION_EXTENSIONS
from ui import caption_panel

THUMBNAIL_CACHE = Path(tempfile.gettempdir()) / "adaptor-studio-thumbnails"
CHECK_HEADERS = ["file", "problem", "detail"]
SUMMARY_HEADERS = ["measure", "value"]
TAG_HEADERS = ["kind", "text", "images"]
CHANGE_HEADERS = ["file", "before", "after"]
USER_ERRORS = (DataError, ValueError, OSError)  # DataError and ConfigError are ValueErrors


def _folder(path: str | None) -> str:
    """The typed dataset folder: any folder on this machine (it is the user's own), but never blank, which
    would mean the studio's working folder."""
    if not (path or "").strip():
        raise DataError("type the folder that holds your images first, then Load")
    return path.strip()


def _table(rows: list[dict], headers: list[str]) -> dict:
    return {"headers": headers, "data": [[row[h] for h in headers] for row in rows]}


def _changes_table(changes) -> dict:
    rows = [{"file": c.file, "before": c.before or "(no caption)", "after": c.after} for c in changes]
    return _table(rows, CHANGE_HEADERS)


def _gallery(images) -> list[tuple[str, str]]:
    out = []
    for item in images:
        thumb = thumbnails.thumbnail(item.image, THUMBNAIL_CACHE)
        if thumb is None:
            out.append((str(thumbnails.placeholder(THUMBNAIL_CACHE)), f"{item.key}: cannot be opened"))
        else:
            out.append((str(thumb), f"{item.key}: {item.training_caption or '(no caption)'}"))
    return out


def load_folder(path: str, caption_ext: str, min_side) -> tuple:
    """Everything the tab shows about a folder: gallery, image keys, status, checks, summary, tags."""
    empty = ([], [], "", _table([], CHECK_HEADERS), _table([], SUMMARY_HEADERS), _table([], TAG_HEADERS))
    if not (path or "").strip():
        return empty[:2] + ("Type the folder that holds your images, then Load.",) + empty[3:]
    try:
        report = checks.check_dataset(_folder(path), caption_ext, int(min_side or checks.DEFAULT_MIN_SIDE))
    except USER_ERRORS as e:
        return empty[:2] + (f"**Error:** {e}",) + empty[3:]
    n, issues = len(report.images), len(report.problems)
    status = (f"Loaded {n} image{'s' if n != 1 else ''} from `{Path(path).expanduser().resolve()}`. "
              + (f"Checks found {issues} problem{'s' if issues != 1 else ''} (see the table below)." if issues else "Checks found no problems."))
    return (_gallery(report.images), [item.key for item in report.images], status,
            _table(report.problems, CHECK_HEADERS), _table(report.summary, SUMMARY_HEADERS),
            _table(checks.caption_frequency(report.images), TAG_HEADERS))


EDITOR_CLEARED = ("", "", "", "", gr.update(visible=False))  # image, caption, folder, stamp, overwrite button


def select_image(path: str, caption_ext: str, keys: list[str], evt: gr.SelectData) -> tuple:
    """(key, its caption, status, its folder, its file's stamp) for a click in the gallery: the editor holds
    the folder and the file together, so Save writes that file whatever is loaded later."""
    if not keys or not isinstance(evt.index, int) or evt.index >= len(keys):
        return "", "", "Load the folder again: the gallery is out of date.", "", ""
    key = keys[evt.index]
    try:
        folder = str(Path(_folder(path)).expanduser().resolve())
        item = caption_files.find_image(folder, key, caption_ext)
    except USER_ERRORS as e:
        return key, "", f"**Error:** {e}", "", ""
    note = ""
    if item.caption is None and item.training_caption:
        note = f" It has no caption file; training uses its folder's text '{item.training_caption}'."
    where = f"{item.caption_path.name} in {folder}" if item.caption_path else "the metadata file"
    return (key, item.caption or "", f"Editing the caption of `{key}` (`{where}`).{note}", folder,
            caption_files.caption_stamp(item.caption_path))


def _write(folder: str, caption_ext: str, key: str, text: str, stamp: str | None) -> tuple:
    """(status, new stamp, overwrite button) after writing the editor's caption into the file it shows."""
    if not key or not (folder or "").strip():
        return "Click an image in the gallery first.", gr.skip(), gr.update(visible=False)
    try:
        written = caption_files.save_caption(folder, key, text or "", caption_ext, expect=stamp)
    except caption_files.CaptionChanged as e:
        return (f"⚠ Not saved: {e} (a bulk change, auto-caption or another program wrote it). Press "
                "**Overwrite it** to replace it with the text here, or click the image again to see what it holds "
                "now.", gr.skip(), gr.update(visible=True))
    except USER_ERRORS as e:
        return f"**Error:** {e}", gr.skip(), gr.update(visible=False)
    return (f"Saved `{written.name}` in `{folder}`.", caption_files.caption_stamp(written),
            gr.update(visible=False))


def save_caption(folder: str, caption_ext: str, key: str, stamp: str, text: str) -> tuple:
    """Save, unless the file changed on disk since it was opened (then the overwrite button asks)."""
    if not stamp:
        return "Click an image in the gallery first.", gr.skip(), gr.update(visible=False)
    return _write(folder, caption_ext, key, text, stamp)


def overwrite_caption(folder: str, caption_ext: str, key: str, text: str) -> tuple:
    return _write(folder, caption_ext, key, text, None)


def current_caption(folder: str, caption_ext: str, key: str):
    """The editor's caption and stamp as its file now holds them (after a bulk change or undo)."""
    if not key or not folder:
        return gr.skip(), gr.skip()
    try:
        item = caption_files.find_image(folder, key, caption_ext)
    except USER_ERRORS:
        return gr.skip(), gr.skip()
    return item.caption or "", caption_files.caption_stamp(item.caption_path)


def bulk_preview(path: str, caption_ext: str, op: str, text: str, replacement: str) -> tuple[dict, str]:
    try:
        changes = caption_files.preview_bulk(_folder(path), op, text, replacement, caption_ext)
    except USER_ERRORS as e:
        return _changes_table([]), f"**Error:** {e}"
    if not changes:
        return _changes_table([]), f"Preview: '{op}' changes no captions."
    return _changes_table(changes), f"Preview: '{op}' would change {len(changes)} caption files (nothing written yet)."


def bulk_apply(path: str, caption_ext: str, op: str, text: str, replacement: str) -> tuple[dict, str]:
    try:
        changes, backup = caption_files.apply_bulk(_folder(path), op, text, replacement, caption_ext)
    except USER_ERRORS as e:
        return _changes_table([]), f"**Error:** {e}"
    if not changes:
        return _changes_table([]), f"'{op}' changes no captions; nothing was written."
    return _changes_table(changes), (f"Changed {len(changes)} caption files; the old ones are backed up in "
                                     f"`{backup}` (Undo restores them).")


def bulk_undo(path: str) -> tuple[dict, str]:
    try:
        restored, removed, what = caption_files.undo_bulk(_folder(path))
    except USER_ERRORS as e:
        return _changes_table([]), f"**Error:** {e}"
    return _changes_table([]), (f"Undid {what}: restored {len(restored)} caption files"
                                + (f", removed {len(removed)} it had created." if removed else "."))


def create_from_upload(studio, files, name: str) -> tuple[str, str]:
    """(new folder path for dataset-path, status)."""
    paths = [f if isinstance(f, str) else getattr(f, "name", str(f)) for f in (files or [])]
    try:
        result = uploads.create_dataset(studio.datasets_dir, name, paths)
    except USER_ERRORS as e:
        return gr.skip(), f"**Error:** {e}"
    skipped = "".join(f"\n- {m}" for m in result.skipped)
    return str(result.folder), (f"Made `{result.folder}` with {len(result.added)} files."
                                + (f" Skipped:{skipped}" if skipped else ""))


def build(studio) -> None:
    start = str(studio.default_dataset) if studio.default_dataset else ""
    first = load_folder(start, ".txt", checks.DEFAULT_MIN_SIDE) if start else None

    with gr.Row():
        path = gr.Textbox(label="Dataset folder", value=start, scale=4, elem_id="dataset-path",
                          placeholder="/path/to/images (images with sidecar captions, kohya N_concept folders, ...)")
        caption_ext = gr.Dropdown(list(CAPTION_EXTENSIONS), value=CAPTION_EXTENSIONS[0], label="Caption extension",
                                  scale=1, elem_id="dataset-caption-ext")
        load = gr.Button("Load", variant="primary", scale=1, elem_id="dataset-load")
    studio.shared["dataset_path"] = path
    status = gr.Markdown(first[2] if first else "", elem_id="dataset-status")
    keys = gr.State(first[1] if first else [])

    with gr.Row():
        gallery = gr.Gallery(value=first[0] if first else None, label="Images (click one to edit its caption)",
                             columns=6, height=420, allow_preview=False, object_fit="contain",
                             scale=3, elem_id="dataset-gallery")
        with gr.Column(scale=2):
            selected = gr.Textbox(label="Image", interactive=False, elem_id="dataset-selected")
            selected_folder = gr.Textbox(visible=False, elem_id="dataset-selected-folder")
            stamp = gr.Textbox(visible=False, elem_id="dataset-caption-stamp")
            caption = gr.Textbox(label="Caption", lines=4, elem_id="dataset-caption")
            with gr.Row():
                save = gr.Button("Save caption", elem_id="dataset-caption-save")
                overwrite = gr.Button("Overwrite it", visible=False, variant="stop",
                                      elem_id="dataset-caption-overwrite")

    with gr.Accordion("Bulk caption changes", open=True):
        with gr.Row():
            op = gr.Dropdown(list(caption_files.BULK_OPS), value=caption_files.BULK_OPS[0], label="Operation",
                             elem_id="dataset-bulk-op")
            text = gr.Textbox(label="Trigger word / prefix / suffix / find / tag", elem_id="dataset-bulk-text")
            replacement = gr.Textbox(label="Replace with (find and replace)", elem_id="dataset-bulk-replace")
        with gr.Row():
            preview = gr.Button("Preview", elem_id="dataset-bulk-preview")
            apply = gr.Button("Apply", variant="primary", elem_id="dataset-bulk-apply")
            undo = gr.Button("Undo last bulk change", elem_id="dataset-bulk-undo")
        changes = gr.Dataframe(headers=CHANGE_HEADERS, label="Captions that change", interactive=False,
                               wrap=True, elem_id="dataset-bulk-table")

    caption_events = caption_panel.build(studio, path, caption_ext, bulk_undo)

    with gr.Accordion("Checks", open=True):
        with gr.Row():
            min_side = gr.Number(value=checks.DEFAULT_MIN_SIDE, precision=0, minimum=1, maximum=100_000,
                                 label="Tiny image threshold (px, shorter side)", elem_id="dataset-min-side")
            run_checks = gr.Button("Run checks", elem_id="dataset-checks-run")
        problems = gr.Dataframe(value=first[3] if first else None, headers=CHECK_HEADERS, label="Problems",
                                interactive=False, wrap=True, elem_id="dataset-checks")
        summary = gr.Dataframe(value=first[4] if first else None, headers=SUMMARY_HEADERS, label="Sizes",
                               interactive=False, wrap=True, elem_id="dataset-summary")
        tags = gr.Dataframe(value=first[5] if first else None, headers=TAG_HEADERS,
                            label="Tags and words (images whose caption holds them)", interactive=False,
                            max_height=320, elem_id="dataset-tags")

    with gr.Accordion("Upload a new dataset", open=False):
        files = gr.File(label="Images, caption files or a zip", file_count="multiple", type="filepath",
                        elem_id="dataset-upload")
        with gr.Row():
            name = gr.Textbox(label=f"New folder name (under {studio.datasets_dir})", elem_id="dataset-upload-name")
            create = gr.Button("Create dataset", elem_id="dataset-upload-create")

    loaded = [gallery, keys, status, problems, summary, tags]
    load_inputs = [path, caption_ext, min_side]
    editor = [selected, caption, selected_folder, stamp, overwrite]

    def load_clearing(*args):
        """Loading a folder empties the editor: what it held belongs to the folder shown before."""
        return load_folder(*args) + EDITOR_CLEARED

    for trigger in (load.click, path.submit, run_checks.click):
        trigger(load_clearing, load_inputs, loaded + editor)
    studio.shared["dataset_load"] = (load_clearing, load_inputs, loaded + editor)
    studio.shared["dataset_status"] = status
    if "demo" in studio.shared:  # a reloaded page shows the folder as it is now, not as it was at start-up
        studio.shared["demo"].load(load_folder, load_inputs, loaded)
    gallery.select(select_image, [path, caption_ext, keys], [selected, caption, status, selected_folder, stamp])

    def reload_keeping(message: str, *args):
        """Reload after a change, keeping the change's message above the load summary."""
        if message.startswith("**Error") or not (args[0] or "").strip():  # nothing changed, or no folder
            return (gr.skip(),) * len(loaded)
        out = load_folder(*args)
        return out[:2] + (f"{message}\n\n{out[2]}",) + out[3:]

    for button, handler, inputs in ((save, save_caption, [selected_folder, caption_ext, selected, stamp, caption]),
                                    (overwrite, overwrite_caption, [selected_folder, caption_ext, selected, caption])):
        # the gallery shows the folder written to, whatever has been typed since
        button.click(handler, inputs, [status, stamp, overwrite]).then(
            reload_keeping, [status, selected_folder, caption_ext, min_side], loaded)
    preview.click(bulk_preview, [path, caption_ext, op, text, replacement], [changes, status])
    for button, handler, inputs in ((apply, bulk_apply, [path, caption_ext, op, text, replacement]),
                                    (undo, bulk_undo, [path])):
        button.click(handler, inputs, [changes, status]).then(
            reload_keeping, [status] + load_inputs, loaded).then(
            current_caption, [selected_folder, caption_ext, selected], [caption, stamp])
    for event, message in caption_events:  # the new captions show in the gallery
        event.then(reload_keeping, [message] + load_inputs, loaded)
    create.click(lambda f, n: create_from_upload(studio, f, n), [files, name], [path, status]).then(
        lambda message, *args: reload_keeping(message, *args) + EDITOR_CLEARED, [status] + load_inputs,
        loaded + editor)
