"""The studio's training queue: each job is an `accelerate launch -m engine.train config.toml` subprocess in
a session of its own, so the app never trains in its own process and cancel can end the whole group.

State lives in `root/.queue/jobs.json` (rewritten atomically on every change) and one folder per job,
`root/.queue/<job_id>/`, with the job's `config.toml` and `console.log`. A new JobQueue over the same root
picks the queue up again: a job that was running when the app died is adopted if its process still runs,
otherwise judged by its run folder's events (done, failed, or interrupted, which can be resumed).
"""
from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.config import (FIELD_BY_NAME, Config, ConfigError, atomic_write_bytes, flatten, load_config,
                           save_config, validate)
from engine.home_lock import FolderBusy, FolderLock
from engine.launch import launch_command
from engine.paths import PROJECT_ROOT, runs_dir, safe_child
from engine.progress import Progress, attempt_console, console_error, events_of, progress

__all__ = ["FolderBusy", "Job", "JobQueue", "Progress", "group_alive", "launch_command", "progress"]

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")
RESUMABLE = ("interrupted", "failed", "cancelled")
KILL_GRACE_S = 5.0  # after SIGTERM, how long a cancelled job may take to stop before SIGKILL
# accelerate's launcher, when the training process it started dies by a signal, exits 1 and says:
_CHILD_SIGNAL = re.compile(r"died with <Signals\.(SIG\w+): \d+>")


@dataclass
class Job:
    id: str
    name: str
    run_dir: Path
    config_path: Path
    status: str = "queued"
    pid: int | None = None  # the launcher's pid, also its process group (start_new_session)
    created: float = 0.0
    started: float | None = None  # start of the latest attempt
    ended: float | None = None
    returncode: int | None = None
    attempts: int = 0
    queued_at: float = 0.0  # when it last entered the queue: a resumed job waits behind those queued before
    reason: str = ""  # why it ended other than done, in words
    earlier_s: float = 0.0  # run time of finished attempts
    log_offset: int = 0  # where the latest attempt's part of console.log begins

    @property
    def console_log(self) -> Path:
        return self.config_path.parent / "console.log"

    @property
    def elapsed(self) -> float:
        """Seconds spent running, over all attempts."""
        if self.status == "running" and self.started is not None:
            return self.earlier_s + max(0.0, time.time() - self.started)
        return self.earlier_s

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["run_dir"], d["config_path"] = str(self.run_dir), str(self.config_path)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Job":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        job = cls(**known)
        job.run_dir, job.config_path = Path(job.run_dir), Path(job.config_path)
        if job.status not in STATUSES:
            raise ValueError(f"unknown status {job.status!r}")
        return job


class JobQueue:
    """Thread-safe; at most `max_running` jobs run at once (one machine: 1). Call poll() now and then, or
    start() a thread that does."""

    def __init__(self, root: Path | str | None = None, max_running: int = 1):
        self.root = Path(root if root is not None else runs_dir()).expanduser().resolve()
        self.state_dir = self.root / ".queue"
        self.state_file = self.state_dir / "jobs.json"
        self.max_running = max_running
        self._lock = threading.RLock()
        self._jobs: dict[str, Job] = {}
        self._procs: dict[str, subprocess.Popen] = {}  # jobs started by this queue; others are watched by pid
        self._cancelling: dict[str, float] = {}  # job id -> when to SIGKILL
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        # only one supervisor may start this queue's jobs (two studios on one home ran a job twice)
        self._supervisor = FolderLock(self.state_dir, "supervisor.lock", what="the job queue")
        with self._lock:
            self._load()

    # ------------------------------------------------------------------ the queue

    def submit(self, values: dict | Config, name: str | None = None) -> Job:
        """Validate and queue a run. Raises ConfigError (nothing queued) for a bad config, a run folder that
        another queued or running job uses, or an earlier run's adaptor there (unless overwrite/resume)."""
        from engine.loop import _refuse_earlier_run, run_dir_for  # torch: only when a job is submitted

        cfg = values if isinstance(values, Config) else validate(flatten(dict(values)))
        out = Path(cfg.output_dir).expanduser()
        if cfg.output_dir == FIELD_BY_NAME["output_dir"].default:
            out = self.root
        elif not out.is_absolute():
            out = PROJECT_ROOT / out  # where the training process (cwd PROJECT_ROOT) would put it
        cfg = cfg.replace(output_dir=str(out.resolve()))
        run_dir = run_dir_for(cfg)
        with self._lock:
            self._refuse_busy_run_dir(run_dir)
            _refuse_earlier_run(run_dir, cfg, cfg.resume_from_checkpoint is not None)
            now = time.time()
            job_id = self._new_id(now)
            job_dir = safe_child(self.state_dir, job_id)
            save_config(cfg, job_dir / "config.toml")
            job = Job(id=job_id, name=name or cfg.adaptor_name, run_dir=run_dir, config_path=job_dir / "config.toml",
                      created=now, queued_at=now)
            self._jobs[job_id] = job
            self._save()
            return job

    def jobs(self) -> list[Job]:
        """Every job in submission order (oldest first)."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.created)

    def get(self, job_id: str) -> Job:
        with self._lock:
            try:
                return self._jobs[job_id]
            except KeyError:
                raise KeyError(f"no job {job_id!r} in {self.state_file}") from None

    def cancel(self, job_id: str, grace: float = KILL_GRACE_S) -> Job:
        """A queued job never starts; a running one gets SIGTERM (its whole process group), SIGKILL after
        `grace` seconds. Returns once it has stopped."""
        with self._lock:
            job = self.get(job_id)
            if job.status == "queued":
                job.status, job.ended, job.reason = "cancelled", time.time(), "cancelled before it started"
                self._save()
                return job
            if job.status != "running":
                return job
            proc = self._procs.get(job.id)
            if proc is None and not _is_training_process(job.pid, job.config_path):
                self._check(job)  # an adopted job that has just ended: judge it, signal nobody
                self._save()
                return job
            self._cancelling[job.id] = time.time() + grace
            signal_group(job.pid, signal.SIGTERM)
        deadline = time.time() + grace
        if proc is not None:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        stop_group(job.pid, deadline)
        with self._lock:
            if job.status == "running":
                self._check(job)
            self._save()
        return job

    def resume(self, job_id: str) -> Job:
        """Queue an interrupted, failed or cancelled job again; it continues from its latest checkpoint
        (resume_from_checkpoint = "latest"; with none, the engine warns and starts over)."""
        with self._lock:
            job = self.get(job_id)
            if job.status not in RESUMABLE:
                raise ConfigError(f"job {job.id} ({job.name}) is {job.status}; only "
                                  f"{', '.join(RESUMABLE)} jobs can be resumed")
            self._refuse_busy_run_dir(job.run_dir)
            cfg = load_config(job.config_path)
            if cfg.resume_from_checkpoint != "latest":
                save_config(cfg.replace(resume_from_checkpoint="latest"), job.config_path)
            job.status, job.queued_at, job.reason = "queued", time.time(), ""
            self._save()
            return job

    # ------------------------------------------------------------------ supervision

    def poll(self) -> None:
        """Reap ended jobs, judge them, and start queued ones while a slot is free."""
        with self._lock:
            changed = False
            for job in [j for j in self._jobs.values() if j.status == "running"]:
                changed |= self._check(job)
            while True:
                running = sum(j.status == "running" for j in self._jobs.values())
                queued = [j for j in self._jobs.values() if j.status == "queued"]
                if running >= self.max_running or not queued:
                    break
                self._launch(min(queued, key=lambda j: (j.queued_at, j.created)))
                changed = True
            if changed:
                self._save()

    def start(self, interval: float = 0.5, **holder_info) -> None:
        """poll() every `interval` seconds in a daemon thread (the jobs outlive the app; a later app adopts
        them). Raises FolderBusy if another live process supervises this queue; `holder_info` (e.g. url=...)
        is what that refusal shows the next one."""
        if self._thread and self._thread.is_alive():
            return
        self._supervisor.acquire(**holder_info)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, args=(interval,), name="job-queue", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; running jobs go on."""
        self._stopping.set()
        if self._thread:
            self._thread.join(timeout=10)
        self._thread = None
        self._supervisor.release()

    def _run(self, interval: float) -> None:
        while True:
            try:
                self.poll()
            except Exception:  # a bad poll must not end supervision of the rest
                log.exception("job queue poll failed")
            if self._stopping.wait(interval):
                return

    def _launch(self, job: Job) -> None:
        job.attempts += 1
        job.started, job.ended, job.returncode, job.reason, job.pid = time.time(), None, None, "", None
        try:
            cfg = load_config(job.config_path)
            cmd = launch_command(cfg, job.config_path)  # the config's [distributed] table: processes, GPUs
            env = {**os.environ, "PYTHONUNBUFFERED": "1",
                   "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)}
            with open(job.console_log, "ab") as console:
                job.log_offset = console.tell()
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                console.write(f"=== {stamp} attempt {job.attempts}: {' '.join(cmd)}\n".encode())
                console.flush()
                proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=console,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        except (ConfigError, OSError) as e:
            job.status, job.ended, job.reason = "failed", time.time(), f"could not start: {e}"
            return
        job.status, job.pid = "running", proc.pid
        self._procs[job.id] = proc

    def _check(self, job: Job) -> bool:
        """Judge a running job if its process has ended; enforce a cancel's SIGKILL deadline. True if changed."""
        proc = self._procs.get(job.id)
        if proc is not None:
            rc = proc.poll()
            ended = rc is not None
        else:
            rc, ended = None, not _is_training_process(job.pid, job.config_path)
        if not ended:
            if job.id in self._cancelling and time.time() > self._cancelling[job.id]:
                signal_group(job.pid, signal.SIGKILL)
            return False
        job.ended, job.returncode = time.time(), rc
        # nothing of a job outlives it (e.g. the training process when only its launcher was killed)
        if self._procs.pop(job.id, None) is not None:
            stop_group(job.pid, time.time())  # SIGKILL, and judge it only once the group has gone
        else:  # an adopted pid's group may be another program's by now: only our own leftovers
            for pid in _group_members(job.pid):
                if _is_training_process(pid, job.config_path):
                    _signal(pid, signal.SIGKILL)
            # it may have ended long before this app looked: its last output says when
            last_output = [p.stat().st_mtime for p in (job.console_log, job.run_dir / "events.jsonl") if p.exists()]
            job.ended = min(job.ended, max([job.started or job.ended, *last_output]))
        job.earlier_s += max(0.0, job.ended - (job.started or job.ended))
        job.status, job.reason = self._verdict(job, rc)
        self._cancelling.pop(job.id, None)
        return True

    def _verdict(self, job: Job, rc: int | None) -> tuple[str, str]:
        events = [e for e in events_of(job.run_dir / "events.jsonl") if e.get("time", 0) >= (job.started or 0)]
        done = any(e["type"] == "done" for e in events)
        errors = [e for e in events if e["type"] == "error"]
        if done and rc in (0, None):  # it finished before a cancel reached it
            return "done", ""
        if job.id in self._cancelling:
            return "cancelled", "cancelled"
        if errors:
            return "failed", str(errors[-1].get("message", ""))
        if rc is None:
            return "interrupted", "its process ended before it finished (killed, or the machine restarted?)"
        if rc < 0:
            return "interrupted", f"killed by {_signal_name(-rc)} from outside the studio (out of memory?)"
        console = attempt_console(job)
        killed = _CHILD_SIGNAL.search(console)
        if killed:
            return "interrupted", f"the training process was killed by {killed.group(1)} (out of memory?)"
        message, _ = console_error(console)
        if rc == 0:
            return "failed", "the training process exited without finishing (no done event)"
        return "failed", message or f"exit code {rc}; see {job.console_log}"

    # ------------------------------------------------------------------ state

    def _refuse_busy_run_dir(self, run_dir: Path) -> None:
        for other in self._jobs.values():
            if other.status in ACTIVE and other.run_dir == run_dir:
                raise ConfigError(f"{run_dir} is the run folder of job {other.id} ({other.name}, {other.status}); "
                                  "wait for it or cancel it, or choose another adaptor_name")

    def _new_id(self, now: float) -> str:
        while True:
            job_id = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(2)
            if job_id not in self._jobs:
                return job_id

    def _save(self) -> None:
        data = {"version": 1, "jobs": [j.to_json() for j in self.jobs()]}
        atomic_write_bytes(self.state_file, json.dumps(data, indent=1).encode())

    def _load(self) -> None:
        if not self.state_file.exists():
            return
        try:
            entries = json.loads(self.state_file.read_text(encoding="utf-8"))["jobs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            aside = self.state_file.with_name(f"jobs.json.unreadable-{int(time.time())}")
            os.replace(self.state_file, aside)
            log.warning("%s could not be read (%s); it is kept as %s and the queue starts empty",
                        self.state_file, e, aside)
            return
        for entry in entries:
            try:
                job = Job.from_json(entry)
            except (TypeError, ValueError) as e:
                log.warning("skipping a job in %s that cannot be read (%s): %r", self.state_file, e, entry)
                continue
            self._jobs[job.id] = job
        for job in self._jobs.values():
            if job.status == "running":  # the app died while it ran: adopt it if it still does
                self._check(job)
        self._save()


# ---------------------------------------------------------------------- processes

def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def signal_group(pgid: int | None, sig: int) -> None:
    if pgid:
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _proc_stat(pid: str) -> tuple[str, int] | None:
    """(state, process group) from /proc/<pid>/stat, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[2])


def _group_members(pgid: int | None) -> list[int]:
    """Live (not zombie) processes of the group."""
    if not pgid:
        return []
    if not Path("/proc/self/stat").exists():  # no /proc: ask the kernel whether anyone is in the group
        try:
            os.killpg(pgid, 0)
            return [pgid]
        except (ProcessLookupError, PermissionError):
            return []
    return [int(e.name) for e in Path("/proc").iterdir()
            if e.name.isdigit() and (st := _proc_stat(e.name)) and st[1] == pgid and st[0] not in "ZX"]


def group_alive(pgid: int | None) -> bool:
    return bool(_group_members(pgid))


def stop_group(pgid: int | None, deadline: float) -> None:
    """Wait for the group to end until deadline, then SIGKILL it and wait a little more."""
    while group_alive(pgid) and time.time() < deadline:
        time.sleep(0.05)
    if group_alive(pgid):
        signal_group(pgid, signal.SIGKILL)
        end = time.time() + 5
        while group_alive(pgid) and time.time() < end:
            time.sleep(0.05)


def _is_training_process(pid: int | None, config_path: Path) -> bool:
    """Whether pid is alive and still the job's training (a pid can be reused by another program)."""
    if not pid:
        return False
    if not Path("/proc/self/cmdline").exists():
        try:
            os.kill(pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    st = _proc_stat(str(pid))
    return st is not None and st[0] not in "ZX" and "engine.train" in args and str(config_path) in args
