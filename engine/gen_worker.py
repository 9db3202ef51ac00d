"""The generation worker: a process that keeps the base model loaded between requests, and its client.

Protocol (`python -m engine.generate --serve`): one JSON request a line on stdin,
`{"id": ..., "op": "compare" | "img2img" | "inpaint" | "xy" | "ping", ...parameters of engine.generate's function
(xy: engine.tools.grid.xy_grid's)}`,
and one JSON response a line on stdout, `{"id": ..., "ok": true, ...result, "loads": n, "seconds": s}` or
`{"id": ..., "ok": false, "error": "message"}`. `loads` counts model loads since the worker started, so a
request served from the cache leaves it unchanged. Nothing else is written to stdout: library output is
sent to stderr. The UI talks to it through GenerationWorker, so a crash or out-of-memory in generation
never takes the app down.
"""
from __future__ import annotations

import collections
import inspect
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

from engine.paths import PROJECT_ROOT

OPS = ("compare", "img2img", "inpaint", "xy")


class GenerationError(ValueError):
    """A generation request that could not be done: bad input (the message names the file or value and what
    to do), or a worker that died (the message says so). Defined here so the UI need not import torch."""


# ----------------------------------------------------------------------------- the worker process

def _functions() -> dict:
    from engine import generate
    from engine.tools.grid import xy_grid
    return {"compare": generate.compare_grid, "img2img": generate.img2img, "inpaint": generate.inpaint,
            "xy": xy_grid}


def handle(request: dict, cache, emit=None) -> dict:
    """One request in, one response out; errors become {"ok": false} and never end the worker. A request with
    "progress": true (to an op that reports it) also gets {"id": ..., "progress": {...}} lines through emit
    before its response."""
    from engine import generate
    from engine.config import ConfigError
    from engine.families import ModelError
    from engine.tools import ToolError

    rid = request.get("id")
    op = request.get("op")
    if op == "ping":
        return {"id": rid, "ok": True, "pid": os.getpid(), "loads": cache.loads}
    if op not in OPS:
        return {"id": rid, "ok": False, "error": f"unknown op {op!r}: use one of ping, {', '.join(OPS)}"}
    fn = _functions()[op]
    params = {k: v for k, v in request.items() if k not in ("id", "op", "progress")}
    if request.get("progress") and emit is not None and "progress" in inspect.signature(fn).parameters:
        params["progress"] = lambda event: emit({"id": rid, "progress": event})
    try:
        inspect.signature(fn).bind(**params, pipe_cache=cache)
    except TypeError as e:
        return {"id": rid, "ok": False, "error": f"bad parameters for {op}: {e}"}
    started = time.perf_counter()
    try:
        result = fn(**params, pipe_cache=cache)
    except (generate.GenerationError, ModelError, ConfigError, ToolError, FileNotFoundError) as e:
        return {"id": rid, "ok": False, "error": str(e), "loads": cache.loads}
    except Exception as e:  # a bug or an out-of-memory: say what, keep serving
        traceback.print_exc(file=sys.stderr)
        hint = "; try a smaller width/height or fewer prompts" if "out of memory" in str(e).lower() else ""
        return {"id": rid, "ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}{hint}",
                "loads": cache.loads}
    return {"id": rid, "ok": True, **result, "loads": cache.loads,
            "seconds": round(time.perf_counter() - started, 3)}


def serve(stdin=None) -> int:
    """Answer requests until stdin closes. stdout is kept for responses: fd 1 is pointed at stderr so that
    anything else that prints (Python or C code) lands there."""
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", buffering=1)
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    from engine.train import _quiet_libraries
    _quiet_libraries()
    from engine.generate import PipeCache, warm
    warm()  # before the first request: the studio starts its worker with the app, long before one comes
    cache = PipeCache()

    def emit(message: dict) -> None:
        out.write(json.dumps(message, default=str) + "\n")
        out.flush()

    for line in stdin or sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
        except ValueError as e:
            response = {"id": None, "ok": False, "error": f"bad request line (not a JSON object): {e}"}
        else:
            response = handle(request, cache, emit)
        emit(response)
    return 0


# ----------------------------------------------------------------------------- the client (for the UI)

class GenerationWorker:
    """Starts `python -m engine.generate --serve` on first use and sends it one request at a time.

    request() raises GenerationError with the worker's message on {"ok": false}. A worker found dead before a
    request is started again; one that dies during a request is started again (once) and the error says so.
    """

    def __init__(self, log_path: Path | None = None):
        self.log_path = Path(log_path) if log_path else None
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue | None = None
        self._stderr_thread: threading.Thread | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=30)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        # OpenMP threads that spin while they wait turn into 10-70x slower images whenever another process
        # wants the cores (a training run, the browser): measured 6-70 s a 64 px cell spinning, 0.7-1 s passive
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self._proc = subprocess.Popen([sys.executable, "-m", "engine.generate", "--serve"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
                                      encoding="utf-8", errors="replace", bufsize=1)
        self._lines = queue.Queue()  # per process: a dead worker's last lines never answer a new request
        threading.Thread(target=self._pump_stdout, args=(self._proc, self._lines), daemon=True).start()
        self._stderr_thread = threading.Thread(target=self._pump_stderr, args=(self._proc,), daemon=True)
        self._stderr_thread.start()

    @staticmethod
    def _pump_stdout(proc, lines: queue.Queue) -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)  # end of file: the worker is gone

    def _pump_stderr(self, proc) -> None:
        log = open(self.log_path, "a", encoding="utf-8") if self.log_path else None
        try:
            for line in proc.stderr:
                self._stderr_tail.append(line.rstrip())
                if log:
                    log.write(line)
                    log.flush()
        finally:
            if log:
                log.close()

    def _died(self, what: str) -> GenerationError:
        code = self._proc.wait()
        self._stderr_thread.join(timeout=2)  # its last words, for the message
        tail = "\n".join(list(self._stderr_tail)[-8:])
        self._start()
        self.restarts += 1
        return GenerationError(f"the generation worker {what} (exit code {code}); it was restarted, try again."
                               + (f"\nIts last messages:\n{tail}" if tail else ""))

    def request(self, op: str, timeout: float = 600, on_progress=None, **params) -> dict:
        """The op's result; on_progress(event), when given, hears the op's progress events as they come."""
        if on_progress is not None:
            params["progress"] = True
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                if self._proc is not None:
                    self.restarts += 1
                self._start()
            rid = next(self._ids)
            try:
                self._proc.stdin.write(json.dumps({"id": rid, "op": op, **params}, default=str) + "\n")
                self._proc.stdin.flush()
            except OSError:
                raise self._died("had stopped") from None
            deadline = time.monotonic() + timeout
            while True:
                try:
                    line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    self._stop(kill=True)
                    raise GenerationError(f"no answer from the generation worker in {timeout:g} s; it was stopped "
                                          "(the next request starts a fresh one)") from None
                if line is None:
                    raise self._died("stopped during this request")
                try:
                    response = json.loads(line)
                except ValueError:
                    self._stderr_tail.append(line.rstrip())
                    continue
                if response.get("id") != rid:
                    continue
                if "progress" not in response:
                    break
                if on_progress is not None:
                    on_progress(response["progress"])
        if not response.pop("ok", False):
            raise GenerationError(response.get("error") or "the generation worker failed without a message")
        response.pop("id", None)
        return response

    def _stop(self, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
            proc.wait()
        elif proc.poll() is None:
            try:
                proc.stdin.close()  # the worker ends when its input ends
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __enter__(self) -> "GenerationWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
