"""The Training tab: method and base model, every schema field (generated), presets, import, and start.

elem_ids: training-method (field-method), field-<name> for every field and error-<name> under it,
training-preset, training-preset-load, training-preset-name, training-preset-save, training-preset-delete,
training-preset-status, training-import-text, training-import, training-import-status, training-plan,
training-check, training-start, training-start-status.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from engine import presets
from engine.builtin import BUILTIN_PREFIX, builtin_names
from engine.config import FIELD_BY_NAME, ConfigError
from engine.paths import inside
from engine.plan import make_plan
from ui.schema_form import SchemaForm, build_form
from ui.studio import Studio

TOP_FIELDS = ("method", "pretrained_model_name_or_path")


def _preset_choices() -> list[str]:
    return [p.name for p in presets.list_presets()]


def _initial_values(studio: Studio) -> dict:
    values = {}
    if studio.default_preset is not None:
        values = presets.read_preset(studio.default_preset)
    if studio.default_dataset is not None:
        values["train_data_dir"] = str(studio.default_dataset)
    return values


def _base_choices() -> list[str]:
    return [BUILTIN_PREFIX + n for n in builtin_names()]


# Folders a run writes to (or loads training state from): they stay inside the studio's home, so a call to
# the studio's API cannot have a run write files, or read a checkpoint, anywhere else on the disk.
HOME_FOLDERS = ("output_dir", "class_data_dir", "resume_from_checkpoint")


def _for_run(cfg, studio: Studio):
    """cfg with its HOME_FOLDERS absolute: a relative one is under the studio's home (output_dir: the run
    folders the Run and Compare tabs read); one outside the home raises UnsafePath naming it."""
    changes = {}
    for name in HOME_FOLDERS:
        value = getattr(cfg, name)
        if value is None or (name == "resume_from_checkpoint" and value == "latest"):
            continue
        changes[name] = str(inside(studio.home, Path(value).expanduser(), name))
    return cfg.replace(**changes)


def import_settings(text: str) -> tuple[dict, str]:
    """A pasted diffusers command line or kohya config TOML -> (values, a report of what did not map)."""
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
    lines = [f"Imported {len(result.values)} settings from the {kind}."]
    if result.unmapped:
        lines.append("Not mapped (no matching setting here): " + ", ".join(f"`{u}`" for u in result.unmapped))
    lines += [f"Note: {n}" for n in result.notes]
    return result.values, "\n\n".join(lines)


def build(studio: Studio) -> SchemaForm:
    values = _initial_values(studio)
    default_preset = next((p.name for p in presets.list_presets()
                           if studio.default_preset and p.path.resolve() == Path(studio.default_preset).resolve()),
                          None)
    with gr.Row():
        preset_box = gr.Dropdown(_preset_choices(), value=default_preset, label="Preset", elem_id="training-preset",
                                 scale=3)
        load_btn = gr.Button("Load preset", elem_id="training-preset-load", scale=1)
        name_box = gr.Textbox(label="Save as (presets/user/)", placeholder="my-preset",
                              elem_id="training-preset-name", scale=2)
        save_btn = gr.Button("Save preset", elem_id="training-preset-save", scale=1)
        delete_btn = gr.Button("Delete preset", elem_id="training-preset-delete", scale=1)
    preset_status = gr.Markdown("", elem_id="training-preset-status")

    form = SchemaForm()
    with gr.Row():
        with gr.Column():
            form.add(FIELD_BY_NAME["method"], values.get("method", FIELD_BY_NAME["method"].default))
        with gr.Column(scale=2):
            base_value = values.get("pretrained_model_name_or_path", FIELD_BY_NAME["pretrained_model_name_or_path"].default)
            form.widgets["pretrained_model_name_or_path"] = gr.Dropdown(
                _base_choices(), value=base_value, allow_custom_value=True, label="pretrained_model_name_or_path",
                info="Base model: a built-in (first), or type a hub id, a local diffusers folder or a single "
                     ".safetensors file.", elem_id="field-pretrained_model_name_or_path")
            form.errors["pretrained_model_name_or_path"] = gr.Markdown(
                "", visible=False, elem_id="error-pretrained_model_name_or_path", elem_classes=["field-error"])
    generated = build_form(values, skip=TOP_FIELDS, open_groups=("dataset", "training"))
    form.widgets.update(generated.widgets)
    form.errors.update(generated.errors)

    with gr.Accordion("Import settings from the diffusers scripts or kohya", open=False):
        import_text = gr.Textbox(lines=6, label="Paste a diffusers command line or a kohya sd-scripts config TOML",
                                 elem_id="training-import-text")
        import_btn = gr.Button("Import", elem_id="training-import")
        import_status = gr.Markdown("", elem_id="training-import-status")

    plan_md = gr.Markdown(_plan_text(form, form.widget_values(values), studio), elem_id="training-plan")
    with gr.Row():
        check_btn = gr.Button("Check settings", elem_id="training-check")
        start_btn = gr.Button("Start training", variant="primary", elem_id="training-start")
    start_status = gr.Markdown("", elem_id="training-start-status")

    # ---- events
    def load_preset(name):
        if not name:
            return [gr.update()] * len(form.names) + ["Pick a preset first."]
        try:
            vals = presets.read_preset(presets.find_preset(name).path)
        except ConfigError as e:
            return [gr.update()] * len(form.names) + [f"⚠ {e}"]
        return form.widget_values(vals) + [f"Loaded preset **{name}**."]

    def save_preset(name, *widget_values):
        cfg, errors = form.check(widget_values)
        if errors:
            return form.error_updates(errors) + [gr.update(), "⚠ Not saved: fix the settings marked below."]
        try:
            _for_run(cfg, studio)  # a preset saved here must be one a run can start from
            path = presets.save_user_preset(name, cfg)
        except (ConfigError, ValueError) as e:
            return form.error_updates({}) + [gr.update(), f"⚠ {e}"]
        saved = f"user/{path.stem}"
        return form.error_updates({}) + [gr.update(choices=_preset_choices(), value=saved), f"Saved **{saved}** ({path})."]

    def delete_preset(name):
        try:
            presets.delete_user_preset(name or "")
        except (ConfigError, ValueError) as e:
            return gr.update(), f"⚠ {e}"
        return gr.update(choices=_preset_choices(), value=None), f"Deleted **{name}**."

    def do_import(text):
        try:
            imported, report = import_settings(text)
        except ConfigError as e:
            return [gr.update()] * len(form.names) + [f"⚠ {e}"]
        return form.widget_values(imported) + [report]

    def check(*widget_values):
        cfg, errors = form.check(widget_values)
        summary = _plan_text(form, widget_values, studio) if cfg else "⚠ Fix the settings marked below first."
        return form.error_updates(errors) + [summary]

    def start(*widget_values):
        cfg, errors = form.check(widget_values)
        if errors:
            return form.error_updates(errors) + [gr.update(), "⚠ Not started: fix the settings marked in red."]
        try:
            job = studio.queue.submit(_for_run(cfg, studio))
        except (ConfigError, ValueError) as e:
            return form.error_updates({}) + [gr.update(), f"⚠ Not started: {e}"]
        return form.error_updates({}) + [gr.update(selected="run"), f"Queued **{job.name}** ({job.id}); see the Run tab."]

    load_btn.click(load_preset, [preset_box], form.inputs + [preset_status])
    save_btn.click(save_preset, [name_box] + form.inputs, form.error_outputs + [preset_box, preset_status])
    delete_btn.click(delete_preset, [preset_box], [preset_box, preset_status])
    import_btn.click(do_import, [import_text], form.inputs + [import_status])
    check_btn.click(check, form.inputs, form.error_outputs + [plan_md])
    start_btn.click(start, form.inputs, form.error_outputs + [studio.shared["tabs"], start_status])
    dataset_path = studio.shared.get("dataset_path")
    if dataset_path is not None:  # the Dataset tab's folder is the one to train on
        dataset_path.change(lambda p: gr.update(value=p) if p else gr.update(), [dataset_path],
                            [form.widgets["train_data_dir"]])
    return form


def _plan_text(form: SchemaForm, widget_values, studio: Studio) -> str:
    cfg, errors = form.check(tuple(widget_values))
    if errors:
        return "Steps and time appear once the settings are valid."
    try:
        return make_plan(_for_run(cfg, studio)).summary()
    except Exception as e:  # the data folder is read to count images; its problem is the message
        return f"⚠ {e}"
