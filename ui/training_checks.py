"""What the Training tab says about its settings: each problem under its field and, near Start, a summary
linking to each; the plan (steps and time); and what the run will train on.

`settle` runs engine.config's checks, the studio's own rule that runs write inside its home, and
engine.preflight: one verdict, the same the CLI's --check gives, after every change as well as on Check and
Start (pre-flight takes milliseconds; its one network probe is remembered for half a minute), so no later
change can hide what Check found.
"""
from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import FIELD_BY_NAME, LAUNCH_KEYS, ConfigError, validate
from engine.paths import UnsafePath, inside
from engine.plan import counted
from engine.schema import BASIC, label
from ui.run_device import training_gpus
from ui.schema_form import SchemaForm, field_for_error

# Folders a run writes to (or loads training state from): they stay inside the studio's home, so a call to
# the studio's API cannot have a run write files, or read a checkpoint, anywhere else on the disk.
# An accelerate config file decides how a run launches: it too is one of the home's files.
HOME_FOLDERS = ("output_dir", "class_data_dir", "resume_from_checkpoint", "accelerate_config_file")


def for_run(cfg, home: Path):
    """cfg with its HOME_FOLDERS absolute: a relative one is under the studio's home (output_dir: the run
    folders the Run and Compare tabs read); one outside the home raises UnsafePath naming it."""
    changes = {}
    for name in HOME_FOLDERS:
        value = getattr(cfg, name)
        if value is None or (name == "resume_from_checkpoint" and value == "latest"):
            continue
        changes[name] = str(inside(home, Path(value).expanduser(), name))
    return cfg.replace(**changes)


@dataclass
class Verdict:
    cfg: object = None  # the Config a run starts from (HOME_FOLDERS absolute), when nothing stops it
    errors: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)
    ready: str = ""  # pre-flight's "Ready: N steps, about T." once it passed
    plan: object = None  # pre-flight's engine.plan.Plan

    @property
    def flagged(self) -> set[str]:
        return set(self.errors) | set(self.warnings)


def settle(form: SchemaForm, widget_values: tuple, home: Path, preflight: bool = True) -> Verdict:
    """The form's values checked: each field, the rules across fields, the home folders, pre-flight."""
    cfg, errors = form.check(widget_values)
    return _settled(cfg, errors, home, preflight)


def settle_values(values: dict, home: Path) -> Verdict:
    """The same for schema values (a preset's), before there is a form."""
    try:
        return _settled(validate(values), {}, home, True)
    except ConfigError as e:
        return Verdict(errors={field_for_error(str(e)): str(e)})


def _settled(cfg, errors: dict[str, str], home: Path, preflight: bool) -> Verdict:
    if errors:
        return Verdict(errors=errors)
    try:
        cfg = for_run(cfg, home)
    except UnsafePath as e:
        return Verdict(errors={field_for_error(str(e)): str(e)})
    if not preflight:
        return Verdict(cfg)
    from engine.preflight import preflight as run_preflight
    report = run_preflight(cfg, runs_root=home / "runs")
    problems = {}
    for p in report.problems:
        problems.setdefault(p.severity, {}).setdefault(p.field, []).append(p.message)
    errors = {k: "; ".join(v) for k, v in problems.get("error", {}).items()}
    warnings = {k: "; ".join(v) for k, v in problems.get("warning", {}).items()}
    return Verdict(None if errors else cfg, errors, warnings, "" if errors else report.summary(), report.plan)


def _link(name: str) -> str:
    """A link that opens the field's accordions and scrolls to it (STUDIO_JS in ui/__init__.py)."""
    if name not in FIELD_BY_NAME:
        return "Settings"
    f = FIELD_BY_NAME[name]
    path = "" if name in BASIC else f"training-advanced group-{f.group}"
    return (f"<a href='#field-{name}' class='field-link' data-field='{name}' data-path='{path}'>"
            f"{html.escape(label(f))} <code>{name}</code></a>")


def summary_html(v: Verdict) -> str:
    """Near Start: each problem with a link to its field, or pre-flight's Ready line."""
    if not v.errors and not v.warnings:
        return f"<p class='form-ready'>{html.escape(v.ready)}</p>" if v.ready else ""
    items = [f"<li class='problem-error'>{_link(k)}: {html.escape(m)}</li>" for k, m in v.errors.items()]
    items += [f"<li class='problem-warning'>{_link(k)} (warning): {html.escape(m)}</li>" for k, m in v.warnings.items()]
    head = (f"⚠ {counted(len(v.errors), 'setting')} to fix before training:" if v.errors else html.escape(v.ready))
    return (f"<div class='form-summary' data-errors='{len(v.errors)}' data-warnings='{len(v.warnings)}'>"
            f"<p><strong>{head}</strong></p><ul>{''.join(items)}</ul></div>")


def plan_text(v: Verdict) -> str:
    if v.plan is None:
        return "Steps and time appear once the settings are valid."
    return v.plan.summary()


_COUNTS: dict[tuple, tuple[int, int]] = {}  # (folder, extension, its mtime) -> (images, captioned)


def _count(folder: str, extension: str) -> tuple[int, int]:
    from engine.data import caption_files
    root = Path(folder).expanduser().resolve()
    key = (str(root), extension, root.stat().st_mtime_ns)  # a caption written (atomically) touches the folder
    if key not in _COUNTS:
        images, _ = caption_files.list_images(root, extension)
        _COUNTS.clear()  # one folder at a time is all the line needs
        _COUNTS[key] = (len(images), sum(1 for i in images if i.training_caption))
    return _COUNTS[key]


def training_on(raw: dict) -> str:
    """"Training on: <folder> (N images, M captioned)", beside Start, for raw config values."""
    folder, name = raw.get("train_data_dir"), raw.get("dataset_name")
    if name and not folder:
        return f"Training on: the dataset <code>{html.escape(name)}</code> (counted when the run reads it)"
    if not folder:
        return "Training on: no dataset yet (pick a folder on the Dataset tab)"
    shown = f"<code>{html.escape(str(folder))}</code>"
    try:
        n, captioned = _count(folder, raw.get("caption_extension") or ".txt")
    except (OSError, ValueError) as e:  # DataError and UnsafePath are ValueErrors
        return f"Training on: {shown} (⚠ {html.escape(str(e))})"
    return f"Training on: {shown} ({counted(n, 'image')}, {captioned} captioned)"


_BATCH_KEYS = ("train_batch_size", "gradient_accumulation_steps", "accelerate_config_file", *LAUNCH_KEYS)


def effective_batch_text(raw: dict, home: Path) -> str:
    """"Effective batch = 2 per GPU x 4 GPUs x 2 accumulation = 16 images per optimizer step", from the batch
    and [distributed] values alone (a problem elsewhere in the form does not hide it). An accelerate config
    file is read for its process count only inside the studio's home."""
    from engine.launch import effective_batch
    try:
        cfg = for_run(validate({"train_data_dir": ".", **{k: raw[k] for k in _BATCH_KEYS if raw.get(k) is not None}}),
                      home)
    except (ConfigError, UnsafePath):
        return "Effective batch: shown once the batch size and the GPUs and machines settings are valid."
    per, procs, accum, total = effective_batch(cfg)
    unit = "GPU" if training_gpus() else "process"
    where = " (from the accelerate config file)" if cfg.accelerate_config_file else ""
    units = unit if procs == 1 else f"{unit}es" if unit == "process" else f"{unit}s"
    return (f"Effective batch = {per} per {unit} × {procs} {units}{where} × {accum} accumulation = "
            f"**{total}** {'image' if total == 1 else 'images'} per optimizer step.")
