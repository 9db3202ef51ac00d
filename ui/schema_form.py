"""The Training form, generated from engine.config.FIELDS: one widget per field, never written by hand.

A field's type picks its widget (bool: checkbox; choices: dropdown; int/float: number; list: comma-separated
text; str: text, or a dropdown that takes any text where the tab suggests values). Its label is in words
(engine.schema.label) with the flag name first in its info, shown small beside the label (CSS), so
`learning_rate` can still be found on the page. engine.schema.BASIC fields form the Basic view; the rest sit
under Advanced, in one accordion per schema group. Each field lives in a box with an error line under the
widget; a box is hidden while its field does not apply (engine.schema.applies) unless it holds a problem.

Numbers carry no minimum or maximum for Gradio to enforce: its popup ("Value 5 is greater than maximum value
1.0") names no field and fades; the engine's own check (the range is in the info) speaks under the field.
`SchemaForm` converts between widget values and schema values both ways.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from engine.config import FIELD_BY_NAME, FIELDS, GROUPS, ConfigError, Field, allowed_text, check_value, validate
from engine.schema import BASIC, MULTILINE, applies, label

UNSET = "(unset)"  # how a dropdown spells "leave it to the default / the model"
GROUP_TITLES = {"model": "Model", "dataset": "Dataset", "training": "Training", "lora": "LoRA",
                "validation": "Validation samples", "output": "Output and checkpoints",
                "distributed": "GPUs and machines (distributed)"}
FIELD_MIN_WIDTH = 300  # px: four fields side by side on a 1400 px window; a hidden one leaves no hole


def _info(f: Field) -> str:
    alias = f" Also read as: {', '.join(f.aliases)}." if f.aliases else ""
    allowed = "" if f.choices else allowed_text(f)  # a dropdown shows its choices itself
    return f"`{f.name}` {f.help}{f' [{allowed}]' if allowed else ''}{alias}"


def to_widget(f: Field, value: Any) -> Any:
    """A schema value as its widget shows it."""
    if f.type is list:
        return ", ".join(value or [])
    if f.type is bool and f.optional:  # three states: unset (the model decides), true, false
        return UNSET if value is None else ("true" if value else "false")
    if f.choices and f.optional:
        return UNSET if value is None else value
    if value is None and (f.type is str or f.optional):
        return ""
    if f.optional and f.type in (int, float):  # shown in a text box (see make_widget)
        return str(value)
    return value


def from_widget(f: Field, value: Any) -> Any:
    """A widget's value as the schema reads it; None means "unset" (the key is left out)."""
    if f.type is bool and f.optional:
        return None if value in (UNSET, None, "") else value in (True, "true")
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


def make_widget(f: Field, value: Any, suggestions: list[str] | None = None) -> gr.components.Component:
    common = dict(label=label(f), info=_info(f), elem_id=f"field-{f.name}", value=to_widget(f, value),
                  elem_classes=["schema-field"])
    if f.type is bool and f.optional:  # a checkbox cannot say "unset"
        return gr.Dropdown(choices=[UNSET, "true", "false"], **common)
    if f.type is bool:
        return gr.Checkbox(**common)
    if f.choices:
        choices = ([UNSET] if f.optional else []) + list(f.choices)
        return gr.Dropdown(choices=choices, **common)
    if suggestions is not None:  # e.g. the built-in models first; any hub id, folder or file typed
        return gr.Dropdown(choices=suggestions, allow_custom_value=True, **common)
    if f.type in (int, float) and f.optional:  # a Number box shows "unset" as 0; empty text stays unset
        return gr.Textbox(lines=1, placeholder="unset", **common)
    if f.type in (int, float):
        return gr.Number(precision=0 if f.type is int else None, **common)
    return gr.Textbox(lines=3 if f.name in MULTILINE else 1, **common)


def field_for_error(message: str) -> str:
    """The field a cross-field message is about: the first schema name it mentions (else the start button)."""
    hits = [(m.start(), m.group(0)) for name in FIELD_BY_NAME
            for m in [re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", message)] if m]
    return min(hits)[1] if hits else ""


def error_html(message: str, warning: bool = False) -> str:
    """A message as the line under its field shows it (escaped: it quotes values the user typed)."""
    kind = "warning" if warning else "error"
    return f"<p class='field-{kind}'>{'Warning' if warning else '⚠'} {html.escape(message)}</p>"


@dataclass
class SchemaForm:
    """The widgets of every field (in the order they were added), the error line under each and the box
    holding both; the accordions of the Advanced view, for opening the ones that hold a problem."""
    widgets: dict[str, gr.components.Component] = field(default_factory=dict)
    errors: dict[str, gr.HTML] = field(default_factory=dict)
    boxes: dict[str, gr.Column] = field(default_factory=dict)
    accordions: dict[str, gr.Accordion] = field(default_factory=dict)  # "advanced" and each group

    @property
    def names(self) -> list[str]:
        return list(self.widgets)

    @property
    def inputs(self) -> list:
        return list(self.widgets.values())

    @property
    def error_outputs(self) -> list:
        return list(self.errors.values())

    @property
    def box_outputs(self) -> list:
        return list(self.boxes.values())

    def add(self, f: Field, value: Any, values: dict[str, Any], suggestions: list[str] | None = None) -> None:
        with gr.Column(min_width=FIELD_MIN_WIDTH, visible=applies(f, values), elem_id=f"box-{f.name}") as box:
            self.widgets[f.name] = make_widget(f, value, suggestions)
            self.errors[f.name] = gr.HTML("", visible=False, elem_id=f"error-{f.name}", padding=False)
        self.boxes[f.name] = box

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

    # ---- what the page shows
    def error_updates(self, errors: dict[str, str], warnings: dict[str, str] | None = None) -> list:
        warnings = warnings or {}
        out = []
        for n in self.names:
            if n in errors:
                out.append(gr.update(value=error_html(errors[n]), visible=True))
            elif n in warnings:
                out.append(gr.update(value=error_html(warnings[n], warning=True), visible=True))
            else:
                out.append(gr.update(value="", visible=False))
        return out

    def box_updates(self, widget_values: tuple, flagged: set[str]) -> list:
        """A box shows while its field applies to the other values, or while it holds a problem."""
        raw = self.raw_values(widget_values)
        return [gr.update(visible=applies(FIELD_BY_NAME[n], raw) or n in flagged) for n in self.names]

    def accordion_updates(self, flagged: set[str]) -> list:
        """Open the accordions that hold a flagged field (others stay as the user left them)."""
        groups = {FIELD_BY_NAME[n].group for n in flagged if n in FIELD_BY_NAME and n not in BASIC}
        return [gr.update(open=True) if key in groups or (key == "advanced" and groups) else gr.update()
                for key in self.accordions]


def build_form(values: dict[str, Any], suggestions: dict[str, list[str]] | None = None,
               notes: dict[str, str] | None = None) -> SchemaForm:
    """The Basic view (BASIC, in that order), then Advanced: one closed accordion per schema group, with
    notes[group] (HTML, e.g. the machine's GPUs) at its top."""
    suggestions, notes = suggestions or {}, notes or {}
    form = SchemaForm()
    with gr.Row(equal_height=False, elem_id="training-basic"):
        for name in BASIC:
            f = FIELD_BY_NAME[name]
            form.add(f, values.get(name, f.default), values, suggestions.get(name))
    with gr.Accordion("Advanced: every other setting", open=False, elem_id="training-advanced") as advanced:
        form.accordions["advanced"] = advanced
        for group in GROUPS:
            fields = [f for f in FIELDS if f.group == group and f.name not in BASIC]
            if not fields:
                continue
            with gr.Accordion(GROUP_TITLES.get(group, group.replace("_", " ").capitalize()), open=False,
                              elem_id=f"group-{group}") as acc:
                form.accordions[group] = acc
                if group in notes:
                    gr.HTML(notes[group], elem_id=f"group-note-{group}", padding=False)
                with gr.Row(equal_height=False):
                    for f in fields:
                        form.add(f, values.get(f.name, f.default), values, suggestions.get(f.name))
    return form
