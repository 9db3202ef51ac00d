"""What the Run tab shows of a run's files, as HTML: the validation images as a grid of prompt x step, the
Outputs panel (downloads of both adaptor files, the config and the model card), the intermediate adaptors
(each with "Compare this one") and where the tracker writes its logs.

Only files inside the run folder, itself under runs/, get a link (Gradio serves the studio home and nothing
else); every text that comes from a run (prompts, names, paths) is escaped.
"""
from __future__ import annotations

import html
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from engine.config import ConfigError, flatten, read_toml
from engine.paths import UnsafePath, inside
from engine.progress import Progress, Sample
from engine.schema import FIELDS
from ui.files import download_link, file_url

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
OUTPUT_LABELS = {"kohya": "kohya format (ComfyUI, AUTOMATIC1111: loras/)",
                 "diffusers": "diffusers format (pipe.load_lora_weights)",
                 "single_file": "single file", "model_card": "model card", "config": "config"}
_INTERMEDIATE = re.compile(r"^(?P<name>[^.].*)-step(?P<step>\d+)$")  # engine.periodic: intermediate/<name>-stepNNNNNN/
# intermediate adaptors the Compare tab can apply as a LoRA file (other methods apply themselves from a run)
COMPARABLE_METHODS = ("lora", "dreambooth")


def run_settings(job) -> dict:
    """The job's config with schema defaults for what it leaves out (no validation: its dataset may be gone)."""
    return settings_from(job.config_path)


def settings_from(config_path: Path) -> dict:
    try:
        raw = flatten(read_toml(config_path))
    except (ConfigError, OSError):
        raw = {}
    return {f.name: raw.get(f.name, f.default) for f in FIELDS}


def servable(runs_dir: Path, run_dir: Path, path: Path) -> bool:
    """Whether the page may link to path: a file of this run, and the run under runs/."""
    try:
        inside(runs_dir, run_dir, "run folder")
        inside(run_dir, path, "file")
    except UnsafePath:
        return False
    return path.is_file()


def _link(runs_dir: Path, run_dir: Path, path: Path, text: str | None = None) -> str:
    if servable(runs_dir, run_dir, path):
        return download_link(path, text)
    return f"<code>{html.escape(str(path))}</code>"


# ----------------------------------------------------------------------------- samples: prompt x step

def sample_grid(records: list[Sample]) -> str:
    """A row per prompt (its line in the prompts when the engine says, else its text), a column per step."""
    if not records:
        return '<div class="sample-grid empty">No validation images yet.</div>'
    rows: dict[tuple, str] = {}
    cells: dict[tuple, list[Path]] = {}
    first_seen: dict[str, int] = {}
    for r in records:  # prompts without an index keep the order they first appeared in
        key = (0, r.prompt_index) if r.prompt_index is not None else (1, first_seen.setdefault(r.prompt, len(first_seen)))
        rows[key] = r.prompt
        cells.setdefault((key, r.step), []).append(r.path)
    steps = sorted({r.step for r in records})
    head = "".join(f'<th data-step="{s}">step {s}</th>' for s in steps)
    body = []
    for key in sorted(rows):
        tds = []
        for s in steps:
            imgs = "".join(f'<a href="{html.escape(file_url(p))}" target="_blank"><img src="{html.escape(file_url(p))}" '
                           f'alt="{html.escape(rows[key])}, step {s}"></a>' for p in cells.get((key, s), []))
            tds.append(f'<td data-step="{s}">{imgs}</td>')
        index = f' data-prompt-index="{key[1]}"' if key[0] == 0 else ""
        body.append(f'<tr{index}><th class="prompt" scope="row">{html.escape(rows[key]) or "(no prompt)"}</th>'
                    f'{"".join(tds)}</tr>')
    return (f'<div class="sample-grid"><table><thead><tr><th>prompt</th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


# ----------------------------------------------------------------------------- outputs

def outputs_html(job, p: Progress, runs_dir: Path) -> str:
    """The finished run's files as downloads; before that, what will appear."""
    files = {k: Path(v) for k, v in p.outputs.items() if k != "run_dir"}
    if not files:
        config = job.run_dir / "config.toml"
        pending = ("The adaptor files (kohya and diffusers format) and the model card appear here when training "
                   "finishes.")
        have = f"<li>{OUTPUT_LABELS['config']}: {_link(runs_dir, job.run_dir, config)}</li>" if config.is_file() else ""
        return f'<div class="run-outputs pending"><p>{pending}</p><ul>{have}</ul></div>'
    items = []
    for key, path in files.items():
        label = OUTPUT_LABELS.get(key, key.replace("_", " "))
        what = _link(runs_dir, job.run_dir, path) if path.is_file() else f"folder <code>{html.escape(str(path))}</code>"
        items.append(f'<li data-output="{html.escape(key)}">{html.escape(label)}: {what}</li>')
    return f'<div class="run-outputs"><ul>{"".join(items)}</ul></div>'


@dataclass(frozen=True)
class Intermediate:
    step: int
    kind: str  # "checkpoint" (checkpoints/checkpoint-N/) or "saved" (intermediate/<name>-stepNNNNNN/)
    kohya: Path | None
    diffusers: Path | None

    @property
    def lora_file(self) -> Path | None:
        return self.kohya or self.diffusers


def intermediates(job, p: Progress, settings: dict) -> list[Intermediate]:
    """The adaptors saved before the end: the checkpoints the events name (pruned ones are gone) and the
    folders save_every_n_steps/epochs write, intermediate/<name>-stepNNNNNN/ with <name>-stepNNNNNN.safetensors
    and diffusers/ inside (engine/periodic.py; a folder appears whole, by a rename)."""
    return intermediates_in(job.run_dir, p.checkpoint_steps, settings)


def intermediates_in(run_dir: Path, checkpoint_steps: dict[Path, int], settings: dict) -> list[Intermediate]:
    found = []
    name = settings.get("adaptor_name") or run_dir.name
    for folder, step in checkpoint_steps.items():
        kohya, diffusers = folder / f"{name}.safetensors", folder / "diffusers" / DIFFUSERS_WEIGHTS
        found.append(Intermediate(step, "checkpoint", kohya if kohya.is_file() else None,
                                  diffusers if diffusers.is_file() else None))
    saved = run_dir / "intermediate"
    for folder in sorted(saved.iterdir()) if saved.is_dir() else []:
        if (m := _INTERMEDIATE.match(folder.name)) and folder.is_dir():
            kohya, diffusers = folder / f"{folder.name}.safetensors", folder / "diffusers" / DIFFUSERS_WEIGHTS
            found.append(Intermediate(int(m["step"]), "saved", kohya if kohya.is_file() else None,
                                      diffusers if diffusers.is_file() else None))
    return sorted(found, key=lambda i: (i.step, i.kind))


def intermediates_html(job, items: list[Intermediate], runs_dir: Path, comparable: bool) -> str:
    if not items:
        return '<div class="run-intermediates empty">No intermediate adaptors yet (see checkpointing_steps and save_every_n_steps).</div>'
    rows = []
    for item in items:
        files = " · ".join(_link(runs_dir, job.run_dir, f, label) for f, label in
                           ((item.kohya, item.kohya and item.kohya.name), (item.diffusers, "diffusers format"))
                           if f is not None) or "(no adaptor file)"
        button = (f'<button class="compare-this" data-kind="{item.kind}" data-step="{item.step}">Compare this one'
                  '</button>' if comparable and item.lora_file is not None else "")
        where = "checkpoint" if item.kind == "checkpoint" else "saved adaptor"
        rows.append(f'<tr data-step="{item.step}"><td>step {item.step}</td><td>{where}</td><td>{files}</td>'
                    f'<td>{button}</td></tr>')
    return f'<div class="run-intermediates"><table><tbody>{"".join(rows)}</tbody></table></div>'


# clicks on "Compare this one" become the HTML component's click event, naming the adaptor by kind and step
INTERMEDIATES_JS = ("element.addEventListener('click', (e) => { const b = e.target.closest('button.compare-this');"
                    " if (b) trigger('click', {kind: b.dataset.kind, step: Number(b.dataset.step)}); });")


def pick_intermediate(job, p: Progress, settings: dict, data) -> tuple[Path, str, str]:
    """(LoRA file, base model, a note) of the intermediate adaptor a click names ({"kind", "step"}); ValueError
    for anything that is not one of this run's."""
    data = data if isinstance(data, dict) else {}
    try:
        step, kind = int(data.get("step")), str(data.get("kind"))
    except (TypeError, ValueError):
        raise ValueError("no intermediate adaptor named: click Compare this one on a row") from None
    item = next((i for i in intermediates(job, p, settings) if i.step == step and i.kind == kind), None)
    if item is None or item.lora_file is None:
        raise ValueError(f"{job.name} has no intermediate adaptor at step {step} (pruned?)")
    note = (f"Comparing **{html.escape(job.name)}** at step {step} ({item.lora_file.name}): press Generate "
            "comparison.")
    return item.lora_file, str(settings.get("pretrained_model_name_or_path") or ""), note


def tracker_html(job, settings: dict) -> str:
    """Where the run's metrics go: the TensorBoard command for its logs/ folder, or the tracker's name."""
    report_to = settings.get("report_to") or "none"
    logs = job.run_dir / "logs"
    if report_to == "tensorboard":
        exe = Path(sys.executable).with_name("tensorboard")
        command = f"{shlex.quote(str(exe)) if exe.exists() else 'tensorboard'} --logdir {shlex.quote(str(logs))}"
        state = "" if logs.is_dir() else " (the folder appears once training starts)"
        return (f'<div class="run-tracker">TensorBoard logs in <code>{html.escape(str(logs))}</code>{state}. '
                f'Watch them with <code class="tensorboard-command">{html.escape(command)}</code> and open '
                f'<a href="http://localhost:6006" target="_blank">http://localhost:6006</a>.</div>')
    if report_to == "wandb":
        return '<div class="run-tracker">Metrics go to Weights &amp; Biases (project <code>adaptor-studio</code>).</div>'
    return ('<div class="run-tracker">No TensorBoard logs for this run (report_to = "none"); set report_to = '
            '"tensorboard" to get them.</div>')
