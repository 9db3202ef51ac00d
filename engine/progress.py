"""What a job's run shows, read from its run folder and console log: progress, curves, samples, errors, the
log tail. Cheap enough to call every second: events.jsonl is read incrementally."""
from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.jobs import Job

_ERROR_LINE = re.compile(r"^(?:config error|error|training stopped): (.*)$")
_HINT_LINE = re.compile(r"^\s+hint: (.*)$")


def read_tail(path: Path, max_bytes: int = 64 * 1024, start: int = 0) -> str:
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(start, size - max_bytes))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def attempt_console(job: Job) -> str:
    return read_tail(job.console_log, start=job.log_offset)


def console_error(text: str) -> tuple[str | None, str | None]:
    """The last error the CLI printed ("error: ...", "  hint: ...") in console text."""
    message = hint = None
    for line in text.splitlines():
        if m := _ERROR_LINE.match(line):
            message, hint = m.group(1), None
        elif message and (m := _HINT_LINE.match(line)):
            hint = m.group(1)
    return message, hint


# events.jsonl -> (its first bytes, bytes read, events so far): a fresh run replaces the file, perhaps under
# the same inode number, but never with the same first event (it holds the time)
_tails: dict[Path, tuple[bytes, int, list[dict]]] = {}
_tails_lock = threading.Lock()


def events_of(path: Path) -> list[dict]:
    """The file's complete events, reading only what was appended since the last call (progress() runs every
    second on files of thousands of steps). Same rules as engine.events.iter_events: a partial last line is
    left for next time, a garbled one skipped."""
    try:
        fh = open(path, "rb")
    except OSError:
        return []
    with fh, _tails_lock:
        head = fh.read(256)
        known, offset, events = _tails.get(path, (b"", 0, []))
        if not known or head[: len(known)] != known or fh.seek(0, os.SEEK_END) < offset:
            offset, events = 0, []
        fh.seek(offset)
        chunk = fh.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        events = events + [e for e in map(_parse_event, complete.splitlines()) if e is not None]
        _tails.pop(path, None)
        _tails[path] = (head, offset + len(complete), events)
        while len(_tails) > 4:  # the runs someone watches; each can hold many MB
            _tails.pop(next(iter(_tails)))
        return events


def _parse_event(line: bytes) -> dict | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and "type" in obj else None


@dataclass(frozen=True)
class Sample:
    """A validation image: its prompt's line (None from engines that do not say) and the step it shows."""
    path: Path
    prompt: str
    prompt_index: int | None
    step: int


@dataclass
class Progress:
    step: int = 0
    total_steps: int | None = None
    epoch: int | None = None
    eta_s: float | None = None
    it_per_s: float | None = None
    peak_memory_mb: float | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    lrs: list[tuple[int, float]] = field(default_factory=list)
    validation_losses: list[tuple[int, float]] = field(default_factory=list)
    samples: list[Path] = field(default_factory=list)
    sample_records: list[Sample] = field(default_factory=list)  # the same images, with prompt and step
    checkpoints: list[Path] = field(default_factory=list)
    checkpoint_steps: dict[Path, int] = field(default_factory=dict)
    device: dict | None = None  # the start event's `device`, when the engine reports one
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    hint: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    resumed_from: int | None = None  # the step the latest resume continued from
    log_tail: str = ""

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


def _number(v: Any) -> float | None:
    try:
        return float(v)  # events write NaN/inf as strings
    except (TypeError, ValueError):
        return None


def progress(job: Job, tail_lines: int = 40) -> Progress:
    """What the job's run folder and console log show now. Events from before the job was submitted (an
    earlier run in the same folder) are ignored; curves span every attempt, and a resumed attempt replaces
    the steps after its checkpoint that the earlier attempt had already run."""
    p = Progress()
    samples: dict[Path, Sample] = {}
    checkpoints: dict[Path, int] = {}
    attempt_since = job.started or job.created
    for e in events_of(job.run_dir / "events.jsonl"):
        t, when = e["type"], e.get("time", 0)
        if when < job.created:
            continue
        if t == "start":
            first = int(e.get("first_step") or 0)
            p.losses = [x for x in p.losses if x[0] <= first]
            p.lrs = [x for x in p.lrs if x[0] <= first]
            p.validation_losses = [x for x in p.validation_losses if x[0] <= first]
            samples = {k: s for k, s in samples.items() if s.step <= first}
            p.step, p.total_steps = first, e.get("total_steps")
            p.resumed_from = first if first else None
            p.device = e.get("device") if isinstance(e.get("device"), dict) else p.device
        elif t == "step":
            step = int(e.get("step") or 0)
            if (loss := _number(e.get("loss"))) is not None:
                p.losses.append((step, loss))
            if (lr := _number(e.get("lr"))) is not None:
                p.lrs.append((step, lr))
            p.step, p.total_steps, p.epoch = step, e.get("total_steps", p.total_steps), e.get("epoch")
            p.it_per_s, p.eta_s, p.peak_memory_mb = e.get("it_per_s"), e.get("eta_s"), e.get("peak_memory_mb")
        elif t == "validation_loss":
            if (loss := _number(e.get("loss"))) is not None:
                p.validation_losses.append((int(e.get("step") or 0), loss))
        elif t == "sample":
            path = Path(e["path"])
            index = e.get("prompt_index")
            samples.pop(path, None)
            samples[path] = Sample(path, str(e.get("prompt") or ""), index if isinstance(index, int) else None,
                                   int(e.get("step") or 0))
        elif t == "checkpoint":
            checkpoints[Path(e["path"])] = int(e.get("step") or 0)
        elif when >= attempt_since and t == "warning":
            p.warnings.append(str(e.get("message", "")))
        elif when >= attempt_since and t == "error":
            p.error, p.hint = str(e.get("message", "")), e.get("hint") or None
        elif when >= attempt_since and t == "done":
            p.outputs = dict(e.get("outputs") or {})
            p.step = int(e.get("step", p.step))
    p.sample_records = [s for path, s in samples.items() if path.is_file()]
    p.samples = [s.path for s in p.sample_records]
    p.checkpoints = [path for path in checkpoints if path.is_dir()]  # pruned ones are gone
    p.checkpoint_steps = {path: checkpoints[path] for path in p.checkpoints}
    if job.status != "running":
        p.eta_s = 0.0 if job.status == "done" else None
    if job.status in ("failed", "interrupted") and p.error is None:
        message, hint = console_error(attempt_console(job))
        p.error = message or job.reason or None
        if job.status == "interrupted":
            hint = hint or "resume it: it continues from its latest checkpoint"
        p.hint = hint
    source = job.console_log if job.console_log.exists() else job.run_dir / "train.log"
    p.log_tail = "\n".join(read_tail(source).splitlines()[-tail_lines:])
    return p
