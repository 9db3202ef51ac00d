"""One captioning run as a subprocess (`python -m engine.caption ... --events`), watched from the studio.

The model loads in the child, never in the app, so the app's memory is the same before and after, and a
cancel is SIGTERM to the child's process group: the child stops after the batch in hand (every caption
written so far stays); SIGKILL follows if it is still there after a grace period.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from engine.jobs import signal_group, stop_group
from engine.paths import PROJECT_ROOT

from .__main__ import to_argv
from .options import CaptionOptions

CANCEL_GRACE_S = 20.0  # a batch on CPU may take a while; its captions are worth waiting for


@dataclass
class CaptionState:
    status: str  # running | done | cancelled | failed
    # while running: starting | loading (from a folder or the cache) | downloading | captioning
    phase: str = "starting"
    model: str = ""
    done: int = 0
    total: int = 0
    captions: list[dict] = field(default_factory=list)  # caption events: image, file, before, caption
    skipped: list[str] = field(default_factory=list)  # "image: why"
    report: list[str] = field(default_factory=list)
    backup: str | None = None
    error: str = ""
    preview: bool = False


class CaptionJob:
    def __init__(self, folder: str | Path, options: CaptionOptions, preview: int | None = None):
        cmd = [sys.executable, "-m", "engine.caption", *to_argv(str(folder), options, preview)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)}
        self._lock = threading.Lock()
        self._state = CaptionState("running", preview=preview is not None)
        self._stderr: deque[str] = deque(maxlen=40)
        self._cancelled = False
        self.proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self._readers = [threading.Thread(target=self._read_events, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for t in self._readers:
            t.start()

    def _read_events(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a stray print from a library: not ours
            if isinstance(event, dict):
                with self._lock:
                    self._apply(event)

    def _apply(self, e: dict) -> None:
        s, t = self._state, e.get("type")
        if t == "start":
            s.total, s.backup = e["total"], e.get("backup")
        elif t == "loading":
            s.phase, s.model = ("downloading" if e.get("source") == "download" else "loading"), e.get("model", "")
        elif t == "loaded":
            s.phase = "captioning"
        elif t == "caption":
            s.done = e["done"]
            s.captions.append({k: e.get(k) for k in ("image", "file", "before", "caption")})
        elif t == "skipped":
            s.done = e["done"]
            s.skipped.append(f"{e['image']}: {e['reason']}")
        elif t == "done":
            s.report = e.get("report") or []
        elif t == "error":
            s.error = e["message"]

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip("\n"))

    def state(self) -> CaptionState:
        """A copy of where the run is; the status is final once the child has exited and been read."""
        rc = self.proc.poll()
        if rc is not None:
            for t in self._readers:
                t.join(timeout=5)
        with self._lock:
            s = CaptionState(**{**self._state.__dict__, "captions": list(self._state.captions),
                                "skipped": list(self._state.skipped)})
        if rc is None:
            return s
        if rc == 0:
            s.status = "done"
        elif rc == 130 or self._cancelled:
            s.status = "cancelled"
        else:
            s.status = "failed"
            if not s.error:  # died without saying why (a crash, the OOM killer): show its last words
                tail = "\n".join(self._stderr) or f"exit status {rc}"
                s.error = f"the captioner stopped (exit status {rc}):\n{tail}"
        return s

    def running(self) -> bool:
        return self.proc.poll() is None

    def cancel(self, grace: float = CANCEL_GRACE_S) -> None:
        """Ask the run to stop after its batch; kill it if it has not within `grace` seconds."""
        if not self.running():
            return
        self._cancelled = True
        signal_group(self.proc.pid, signal.SIGTERM)
        stop_group(self.proc.pid, time.time() + grace)
        self.proc.wait(timeout=10)

    def wait(self, timeout: float | None = None) -> CaptionState:
        self.proc.wait(timeout=timeout)
        return self.state()
