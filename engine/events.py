"""JSON-lines run events (DESIGN.md §3): the contract the UI, the tests and users read.

One object per line with `type` and `time`; each line is written and flushed whole, so a reader sees
at most one partial line (the last), which `read_events` skips. A line the disk has no room for is taken back
whole and raises DiskFull (an `error` event still reaches the console).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator, TextIO

from engine.atomic import DiskFull, disk_full_guard

EVENT_TYPES = ("start", "step", "sample", "validation_loss", "adaptor", "checkpoint", "warning", "error", "done")


def _clean(v: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so the line stays valid JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class EventLog:
    """Writes events.jsonl and mirrors a short human line to the console.

    Only the main process writes (pass enabled=False elsewhere); `emit` is then a no-op.
    """

    def __init__(self, path: str | Path | None, enabled: bool = True, console: TextIO | None = sys.stdout,
                 log_path: str | Path | None = None):
        self.enabled = enabled
        self.console = console if enabled else None
        self._fh: BinaryIO | None = None
        self._log: BinaryIO | None = None
        if enabled and path is not None:
            with disk_full_guard(path, 4096):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(path, "ab", buffering=0)
        if enabled and log_path is not None:
            with disk_full_guard(log_path, 4096):
                self._log = open(log_path, "ab", buffering=0)

    def emit(self, type_: str, **fields: Any) -> dict | None:
        if not self.enabled:
            return None
        assert type_ in EVENT_TYPES, type_
        event = {"type": type_, "time": round(time.time(), 3), **_clean(fields)}
        stream = sys.stderr if type_ in ("error", "warning") and self.console else None
        # the error that stops a run (a full disk, say) still reaches the console when the files cannot take it
        self._append(self._fh, json.dumps(event) + "\n", must=type_ != "error")
        self.say(self._human(event), stream, must=type_ != "error")
        return event

    def say(self, line: str | None, stream: TextIO | None = None, must: bool = True) -> None:
        """A plain log line: to the console and train.log, never to events.jsonl."""
        if not self.enabled or not line:
            return
        if self.console:
            print(line, file=stream or self.console, flush=True)
        self._append(self._log, line + "\n", must)

    @staticmethod
    def _append(fh: BinaryIO | None, text: str, must: bool) -> None:
        """One whole line or none: a write the disk cannot take is cut back off (readers never see half of it)."""
        if fh is None:
            return
        data = text.encode("utf-8")
        start = os.fstat(fh.fileno()).st_size
        try:
            with disk_full_guard(fh.name, len(data), cleanup=lambda: os.ftruncate(fh.fileno(), start)):
                view = memoryview(data)
                while view:
                    view = view[fh.write(view):]
        except DiskFull:
            if must:
                raise

    @staticmethod
    def _human(e: dict) -> str | None:
        t = e["type"]
        if t == "step":
            loss = e.get("loss")
            loss_s = f"{loss:.4f}" if isinstance(loss, float) else str(loss)
            return (f"step {e['step']}/{e['total_steps']}  epoch {e.get('epoch')}  loss {loss_s}  "
                    f"lr {e.get('lr', 0):.2e}  {e.get('it_per_s', 0):.2f} it/s  "
                    f"ETA {format_duration(e.get('eta_s'))}")
        if t == "start":
            return (f"training {e.get('adaptor_name')} ({e.get('method')}, {e.get('model_family')}) on "
                    f"{e.get('num_images')} images: {e.get('total_steps')} steps, "
                    f"{e.get('num_epochs')} epochs -> {e.get('run_dir')}")
        if t == "warning":
            return f"warning: {e.get('message')}"
        if t == "error":
            hint = e.get("hint")
            return f"error: {e.get('message')}" + (f"\n  hint: {hint}" if hint else "")
        if t == "sample":
            return f"sample: {e.get('path')}"
        if t == "checkpoint":
            return f"checkpoint: {e.get('path')} (step {e.get('step')})"
        if t == "done":
            return f"done in {format_duration(e.get('elapsed'))}: " + ", ".join(
                str(v) for v in (e.get("outputs") or {}).values())
        return None

    def close(self) -> None:
        for fh in (self._fh, self._log):
            if fh:
                fh.close()
        self._fh = self._log = None


def read_events(path: str | Path) -> list[dict]:
    return list(iter_events(path))


def iter_events(path: str | Path) -> Iterator[dict]:
    """Every complete event in the file; a partial or garbled line (a writer mid-line) is skipped."""
    p = Path(path)
    if not p.exists():
        return
    with open(p, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and "type" in obj:
                yield obj
