"""The Training form, generated from engine.config.FIELDS: one widget per field, never written by hand.

A field's type picks its widget (bool: checkbox; choices: dropdown; int/float: number with the schema's
range; list: comma-separated text; str: text). Each widget has an error line under it that validation
fills in. `SchemaForm` converts between widget values and schema values both ways.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from engine.config import FIELD_BY_NAME, FIELDS, GROUPS, ConfigError, Field, allowed_text, check_value, validate

COLUMNS = 3  # fields side by side in a group
UNSET = "(unset)"  # how a dropdown spells "leave it to the default / the model"
GROUP_TITLES = {"model": "Model", "dataset": "Dataset", "training": "Training", "lora": "LoRA",
                "validation": "Validation samples", "output": "Output and checkpoints"}


def _info(f: Field) -> str:
    alias = f" Also read as: {', '.join(f.aliases)}." if f.aliases else ""
    allowed = "" if f.choices else allowed_text(f)  # a dropdown shows its choices itself
    return f"{f.help}{f' [{allowed}]' if allowed else ''}{alias}"


def to_widget(f: Field, value: Any) -> Any:
    """A schema value as its widget shows it."""
    if f.type is list:
        return ", ".join(value or [])
    if f.choices and f.optional:
        return UNSET if value is None else value
    if value is None and (f.type is str or f.optional):
        return ""
    if f.optional and f.type in (int, float):  # shown in a text box (see make_widget)
        return str(value)
    return value


def from_widget(f: Field, value: Any) -> Any:
    """A widget's value as the schema reads it; None means "unset" (the key is left out)."""
    if f.choices and value == UNSET:
        return None
    if isinstance(value, str) and f.type is not str:
        value = value.strip()
        if f.type is not list and value == "":
            return None
    if f.type is str and f.optional and isinstance(value, str) and value.strip() == "":
        return None
    if f.type is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def make_widget(f: Field, value: Any) -> gr.components.Component:
    common = dict(label=f.name, info=_info(f), elem_id=f"field-{f.name}", value=to_widget(f, value))
    if f.type is bool:
        return gr.Checkbox(**common)
    if f.choices:
        choices = ([UNSET] if f.optional else []) + list(f.choices)
        return gr.Dropdown(choices=choices, **common)
    if f.type in (int, float) and f.optional:  # a Number box shows "unset" as 0; empty text stays unset
        return gr.Textbox(lines=1, placeholder="unset", **common)
    if f.type in (int, float):
        return gr.Number(minimum=f.min, maximum=f.max, precision=0 if f.type is int else None, **common)
    return gr.Textbox(lines=1, **common)


def field_for_error(message: str) -> str:
    """The field a cross-field message is about: the first schema name it mentions (else the start button)."""
    hits = [(m.start(), m.group(0)) for name in FIELD_BY_NAME
            for m in [re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", message)] if m]
    return min(hits)[1] if hits else ""


@dataclass
class SchemaForm:
    """The widgets of every field (in FIELDS order) and the error line under each."""
    widgets: dict[str, gr.components.Component] = field(default_factory=dict)
    errors: dict[str, gr.Markdown] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.widgets)

    @property
    def inputs(self) -> list:
        return list(self.widgets.values())

    @property
    def error_outputs(self) -> list:
        return list(self.errors.values())

    def add(self, f: Field, value: Any) -> None:
        self.widgets[f.name] = make_widget(f, value)
        self.errors[f.name] = gr.Markdown("", visible=False, elem_id=f"error-{f.name}",
                                          elem_classes=["field-error"])

    # ---- values
    def raw_values(self, widget_values: tuple) -> dict[str, Any]:
        """Widget values as a raw config dict: unset fields are left out, as in a TOML file."""
        raw = {}
        for name, v in zip(self.names, widget_values):
            v = from_widget(FIELD_BY_NAME[name], v)
            if v is not None:
                raw[name] = v
        return raw

    def widget_values(self, values: dict[str, Any]) -> list:
        """Schema values (missing keys: defaults) as a list of widget updates, in input order."""
        return [to_widget(FIELD_BY_NAME[n], values.get(n, FIELD_BY_NAME[n].default)) for n in self.names]

    def check(self, widget_values: tuple) -> tuple[Any, dict[str, str]]:
        """(Config or None, {field: message}): each field on its own first, then the rules across fields."""
        raw = self.raw_values(widget_values)
        errors = {}
        for name, v in raw.items():
            try:
                check_value(name, v)
            except ConfigError as e:
                errors[name] = str(e)
        if errors:
            return None, errors
        try:
            return validate(raw), {}
        except ConfigError as e:
            return None, {field_for_error(str(e)): str(e)}

    def error_updates(self, errors: dict[str, str]) -> list:
        return [gr.update(value=f"⚠ {errors[n]}", visible=True) if n in errors else gr.update(value="", visible=False)
                for n in self.names]


def build_form(values: dict[str, Any], skip: tuple[str, ...] = (), open_groups: tuple[str, ...] = ()) -> SchemaForm:
    """Accordions per schema group, widgets in schema order; `skip` fields are placed by the caller (add())."""
    form = SchemaForm()
    for group in GROUPS:
        fields = [f for f in FIELDS if f.group == group and f.name not in skip]
        if not fields:
            continue
        with gr.Accordion(GROUP_TITLES.get(group, group.replace("_", " ").capitalize()),
                          open=group in open_groups, elem_id=f"group-{group}"):
            for start in range(0, len(fields), COLUMNS):
                with gr.Row(equal_height=False):
                    for f in fields[start:start + COLUMNS]:
                        with gr.Column(min_width=240):
                            form.add(f, values.get(f.name, f.default))
    return form
