"""The Training tab: a sticky action bar (presets, import, Check, Start, what it trains on, the problems),
then the form generated from the schema: the Basic view, and Advanced for everything else.

The training folder is the Dataset tab's: loading a preset or an import keeps it, and offers the preset's
own folder as a button. Every change, Check and Start check the settings (engine.config) and pre-flight them
on this machine (engine.preflight): each problem shows under its field and, linked, in the summary; Check
and Start also open the accordions that hold one, and Start starts nothing while one remains.

elem_ids: training-actions (the sticky bar), training-preset, training-preset-load, training-presets-toggle,
training-presets-panel, training-preset-name, training-preset-save, training-preset-delete,
training-preset-status, training-preset-data (hidden), training-use-preset-data, training-import-toggle,
training-import-panel, training-import-text, training-import, training-import-status, training-check,
training-start, training-start-status, training-on, training-summary, training-plan, training-effective-batch,
training-basic, training-advanced, group-<group>, group-note-distributed (the machine's GPUs), box-<name>,
field-<name> and error-<name> for every field.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import gradio as gr

from engine import presets
from engine.builtin import builtin_names
from engine.config import ConfigError
from ui.run_device import device_picker_html, gpu_id_suggestions
from ui.schema_form import SchemaForm, build_form
from ui.studio import Studio
from ui.training_checks import effective_batch_text, plan_text, settle, settle_values, summary_html, training_on

DATA_KEYS = ("train_data_dir", "dataset_name")  # where a run's images come from: exactly one is set


def _preset_choices() -> list[str]:
    return [p.name for p in presets.list_presets()]


def _initial_values(studio: Studio) -> dict:
    values = {}
    if studio.default_preset is not None:
        values = presets.read_preset(studio.default_preset)
    if studio.default_dataset is not None:
        values["train_data_dir"] = str(studio.default_dataset)
    return values


def import_settings(text: str) -> tuple[dict, str]:
    """A pasted diffusers command line or kohya config TOML -> (values, a report of what did not map, as
    HTML: its notes quote the user's text and kohya's '<repeats>_<name>', so every line is escaped)."""
    text = (text or "").strip()
    if not text:
        raise ConfigError("paste a diffusers training command (accelerate launch train_...py --flag=value ...) "
                          "or a kohya sd-scripts config TOML first")
    import tomllib
    try:  # the same test import_pasted makes: a kohya config is TOML, anything else a command line
        kind = "kohya config" if tomllib.loads(text) else "command line"
    except tomllib.TOMLDecodeError:
        kind = "command line"
    result = presets.import_pasted(text)
    lines = [f"<p>Imported {len(result.values)} settings from the {kind}.</p>"]
    if result.unmapped:
        lines.append("<p>Not mapped (no matching setting here): "
                     + ", ".join(f"<code>{html.escape(u)}</code>" for u in result.unmapped) + "</p>")
    lines += [f"<p>Note: {html.escape(n)}</p>" for n in result.notes]
    return result.values, "".join(lines)


def keep_dataset(values: dict, folder: str) -> tuple[dict, str, str]:
    """A preset's or import's values training on the Dataset tab's folder (when one is typed there), the
    data source they named (JSON for the "use it" button, "" when it is that same folder), and a note."""
    theirs = {k: values[k] for k in DATA_KEYS if values.get(k)}
    folder = (folder or "").strip()
    if not folder or not theirs or theirs == {"train_data_dir": folder}:
        return values, "", ""
    kept = {k: v for k, v in values.items() if k not in DATA_KEYS}
    kept["train_data_dir"] = folder
    (key, value), = theirs.items()
    note = (f"Training stays on the Dataset tab's folder `{folder}`; this one names {key} `{value}` "
            "(use the button to train on that instead).")
    return kept, json.dumps(theirs), note


def _use_button(data: str):
    if not data:
        return gr.update(visible=False)
    (key, value), = json.loads(data).items()
    return gr.update(visible=True, value=f"Train on its {'folder' if key == 'train_data_dir' else 'dataset'}: {value}")


def build(studio: Studio) -> SchemaForm:
    values = _initial_values(studio)
    first = settle_values(values, studio.home)
    default_preset = next((p.name for p in presets.list_presets()
                           if studio.default_preset and p.path.resolve() == Path(studio.default_preset).resolve()),
                          None)
    with gr.Column(elem_id="training-actions"):  # sticky (CSS): always in reach while the form scrolls
        with gr.Row(equal_height=True):
            preset_box = gr.Dropdown(_preset_choices(), value=default_preset, label="Preset", scale=3,
                                     elem_id="training-preset")
            load_btn = gr.Button("Load preset", elem_id="training-preset-load", scale=1)
            presets_toggle = gr.Button("Save / delete preset…", elem_id="training-presets-toggle", scale=1)
            import_toggle = gr.Button("Import…", elem_id="training-import-toggle", scale=1)
            check_btn = gr.Button("Check settings", elem_id="training-check", scale=1)
            start_btn = gr.Button("Start training", variant="primary", elem_id="training-start", scale=1)
        with gr.Column(elem_id="training-presets-panel", elem_classes=["action-panel", "closed"]):
            with gr.Row(equal_height=True):
                name_box = gr.Textbox(label="Save as (presets/user/)", placeholder="my-preset", scale=3,
                                      elem_id="training-preset-name")
                save_btn = gr.Button("Save preset", elem_id="training-preset-save", scale=1)
                delete_btn = gr.Button("Delete the chosen preset", elem_id="training-preset-delete", scale=1)
        with gr.Column(elem_id="training-import-panel", elem_classes=["action-panel", "closed"]):
            import_text = gr.Textbox(lines=5, label="Paste a diffusers command line or a kohya sd-scripts config TOML",
                                     elem_id="training-import-text")
            import_btn = gr.Button("Import", elem_id="training-import")
            import_status = gr.HTML("", elem_id="training-import-status", padding=False)
        preset_status = gr.Markdown("", elem_id="training-preset-status")
        preset_data = gr.Textbox(visible=False, elem_id="training-preset-data")
        use_data_btn = gr.Button(visible=False, size="sm", elem_id="training-use-preset-data")
        start_status = gr.Markdown("", elem_id="training-start-status")
        on_html = gr.HTML(training_on(values), elem_id="training-on", padding=False)
        summary = gr.HTML(summary_html(first), elem_id="training-summary", padding=False)
        plan_md = gr.Markdown(plan_text(first), elem_id="training-plan")
        batch_md = gr.Markdown(effective_batch_text(values, studio.home), elem_id="training-effective-batch")

    form = build_form(values, suggestions={"pretrained_model_name_or_path": builtin_names(),
                                           "gpu_ids": gpu_id_suggestions()},
                      notes={"distributed": device_picker_html()})
    home = studio.home
    n = len(form.names)
    derived = [summary, plan_md, on_html, batch_md]  # what follows from the values

    # ---- what the settings say (engine.config and pre-flight): on every change, on Check and on Start
    def shown(widget_values, verdict):
        return (form.error_updates(verdict.errors, verdict.warnings) + form.box_updates(widget_values, verdict.flagged)
                + [summary_html(verdict), plan_text(verdict), training_on(raw := form.raw_values(widget_values)),
                   effective_batch_text(raw, home)])

    def refresh(*widget_values):
        return shown(widget_values, settle(form, widget_values, home))

    def check(*widget_values):
        verdict = settle(form, widget_values, home)
        return shown(widget_values, verdict) + form.accordion_updates(verdict.flagged)

    def start(*widget_values):
        verdict = settle(form, widget_values, home)
        out = shown(widget_values, verdict) + form.accordion_updates(verdict.flagged)
        if verdict.cfg is None:
            return out + [gr.update(), "⚠ Not started: fix the settings listed above (each is marked under its field)."]
        try:
            job = studio.queue.submit(verdict.cfg)
        except (ConfigError, ValueError) as e:
            return out + [gr.update(), f"⚠ Not started: {html.escape(str(e))}"]
        return out + [gr.update(selected="run"), f"Queued **{job.name}** ({job.id}); see the Run tab."]

    def page_opened(*widget_values):
        """A reloaded page shows the form's first values: what follows from them is worked out afresh."""
        return [gr.update(choices=_preset_choices())] + refresh(*widget_values)[-len(derived):]

    # ---- presets and import: values in, the Dataset tab's folder kept
    def load_preset(name, folder):
        if not name:
            return [gr.update()] * n + ["Pick a preset first.", gr.update(), gr.update()]
        try:
            vals = presets.read_preset(presets.find_preset(name).path)
        except ConfigError as e:
            return [gr.update()] * n + [f"⚠ {html.escape(str(e))}", gr.update(), gr.update()]
        vals, data, note = keep_dataset(vals, folder)
        return form.widget_values(vals) + [f"Loaded preset **{name}**. {note}", data, _use_button(data)]

    def do_import(text, folder):
        try:
            imported, report = import_settings(text)
        except ConfigError as e:
            return [gr.update()] * n + [f"<p>⚠ {html.escape(str(e))}</p>", gr.update(), gr.update()]
        imported, data, note = keep_dataset(imported, folder)
        return form.widget_values(imported) + [report + (f"<p>{html.escape(note)}</p>" if note else ""),
                                               data, _use_button(data)]

    def use_preset_data(data):
        try:
            (key, value), = json.loads(data or "{}").items()
        except (ValueError, AttributeError):
            key = value = None
        if key not in DATA_KEYS or not isinstance(value, str):
            return [gr.update()] * 3 + ["Load a preset or import first.", gr.update(visible=False)]
        other = "dataset_name" if key == "train_data_dir" else "train_data_dir"
        folder = gr.update(value=value) if key == "train_data_dir" else gr.update()
        return [folder, gr.update(value=value) if key == "train_data_dir" else gr.update(value=""),
                gr.update(value=value) if key == "dataset_name" else gr.update(value=""),
                f"Training on {key} `{value}` now ({other} cleared).", gr.update(visible=False)]

    def save_preset(name, *widget_values):
        # a preset saved here must be one a run can start from; this machine's state is no reason to refuse it
        verdict = settle(form, widget_values, home, preflight=False)
        if verdict.cfg is None:
            return form.error_updates(verdict.errors) + [gr.update(), "⚠ Not saved: fix the settings marked below."]
        try:
            path = presets.save_user_preset(name, form.check(widget_values)[0])
        except (ConfigError, ValueError) as e:
            return form.error_updates({}) + [gr.update(), f"⚠ {html.escape(str(e))}"]
        saved = f"user/{path.stem}"
        return form.error_updates({}) + [gr.update(choices=_preset_choices(), value=saved), f"Saved **{saved}** ({path})."]

    def delete_preset(name):
        try:
            presets.delete_user_preset(name or "")
        except (ConfigError, ValueError) as e:
            return gr.update(), f"⚠ {html.escape(str(e))}"
        return gr.update(choices=_preset_choices(), value=None), f"Deleted **{name}**."

    # ---- wiring
    refresh_outputs = form.error_outputs + form.box_outputs + derived
    check_outputs = refresh_outputs + list(form.accordions.values())
    dataset_path = studio.shared.get("dataset_path") or gr.Textbox(visible=False)
    gr.on([w.input for w in form.inputs], refresh, form.inputs, refresh_outputs, trigger_mode="always_last",
          api_name="refresh_form")
    check_btn.click(check, form.inputs, check_outputs)
    start_btn.click(start, form.inputs, check_outputs + [studio.shared["tabs"], start_status])
    data_outputs = [preset_data, use_data_btn]
    load_btn.click(load_preset, [preset_box, dataset_path], form.inputs + [preset_status] + data_outputs).then(
        refresh, form.inputs, refresh_outputs)
    import_btn.click(do_import, [import_text, dataset_path], form.inputs + [import_status] + data_outputs).then(
        refresh, form.inputs, refresh_outputs)
    used = use_data_btn.click(use_preset_data, [preset_data], [dataset_path, form.widgets["train_data_dir"],
                                                               form.widgets["dataset_name"], preset_status,
                                                               use_data_btn])
    if "dataset_load" in studio.shared:  # the Dataset tab shows the folder now trained on
        used = used.then(*studio.shared["dataset_load"])
    used.then(refresh, form.inputs, refresh_outputs)
    save_btn.click(save_preset, [name_box] + form.inputs, form.error_outputs + [preset_box, preset_status])
    delete_btn.click(delete_preset, [preset_box], [preset_box, preset_status])
    for toggle, panel in ((presets_toggle, "training-presets-panel"), (import_toggle, "training-import-panel")):
        toggle.click(None, js=f"() => document.getElementById('{panel}').classList.toggle('closed')")
    if "dataset_path" in studio.shared:  # the Dataset tab's folder is the one to train on
        dataset_path.change(lambda p: gr.update(value=p) if p else gr.update(), [dataset_path],
                            [form.widgets["train_data_dir"]])
    if "dataset_status" in studio.shared:  # a folder loaded or a caption saved there: the counts here follow
        studio.shared["dataset_status"].change(refresh, form.inputs, refresh_outputs, trigger_mode="always_last")
    if "demo" in studio.shared:
        studio.shared["demo"].load(page_opened, form.inputs, [preset_box] + derived)
    return form

