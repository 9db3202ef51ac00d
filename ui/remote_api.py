"""The remote API: /api/v1 on the studio's own server, for scripts and other machines (docs/remote-api.md).

Its routes are handed to Gradio's FastAPI app (launch's app_kwargs "routes"), so the Host/Origin guard
(ui/guard.py), which wraps that whole app, stands in front of them as of every other route. Each route also
needs the API token or an --auth pair (ui/api_auth.py). They only call the studio's job queue and read run
folders; every path a request names is checked to lie inside its folder.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, StreamingResponse

from engine.atomic import DiskFull
from engine.config import ConfigError
from engine.jobs import ACTIVE, Job
from engine.paths import UnsafePath, relative_inside
from engine.progress import events_of, progress
from ui.api_auth import ApiAuth
from ui.api_config import confine, read_submission

PREFIX = "/api/v1"
# what a run folder holds that a client may download (DESIGN.md §3): adaptors, configs, model cards, logs, samples
FILE_SUFFIXES = (".safetensors", ".json", ".toml", ".md", ".txt", ".log", ".jsonl", ".png", ".jpg", ".jpeg",
                 ".webp")
FOLLOW_POLL_S = 0.25
KEEPALIVE_S = 15.0  # a blank line while a followed job is quiet, so proxies keep the stream open
MAX_BODY_BYTES = 1 << 20  # a config is a few KB


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status, detail=message)


def job_json(job: Job, home: Path) -> dict[str, Any]:
    p = progress(job, tail_lines=1)
    run = job.run_dir

    def rel(path) -> str:  # paths as the files route takes them
        try:
            return Path(path).relative_to(run).as_posix()
        except ValueError:
            return str(path)

    try:
        run_shown = run.relative_to(home).as_posix()
    except ValueError:
        run_shown = str(run)
    return {"id": job.id, "name": job.name, "status": job.status, "reason": job.reason, "run_dir": run_shown,
            "attempts": job.attempts, "created": job.created, "started": job.started, "ended": job.ended,
            "elapsed_s": round(job.elapsed, 1), "step": p.step, "total_steps": p.total_steps,
            "error": p.error, "hint": p.hint, "outputs": {k: rel(v) for k, v in p.outputs.items() if k != "run_dir"}}


def _job_events(job: Job) -> list[dict]:
    """The job's events so far: those of an earlier run in its folder (before it was submitted) left out."""
    return [e for e in events_of(job.run_dir / "events.jsonl") if e.get("time", 0) >= job.created]


def _download_path(job: Job, relpath: str) -> Path:
    try:
        path = relative_inside(job.run_dir, relpath, "file")
    except UnsafePath as e:
        raise _error(400, str(e)) from None
    parts = path.relative_to(job.run_dir).parts
    if not parts or any(part.startswith(".") for part in parts):  # .earlier-run, temps of a write
        raise _error(400, f"file {relpath!r} is not one of the run's files")
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise _error(400, f"file {relpath!r}: only {', '.join(FILE_SUFFIXES)} files can be downloaded")
    # a link made inside the run folder must still land inside it
    if not path.is_file() or not path.resolve().is_relative_to(job.run_dir.resolve()):
        raise _error(404, f"no file {relpath!r} in the run folder of job {job.id}")
    return path


def _run_files(job: Job) -> list[dict[str, Any]]:
    root = job.run_dir
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or path.suffix.lower() not in FILE_SUFFIXES or not path.is_file():
                continue
            found.append({"path": path.relative_to(root).as_posix(), "size": path.stat().st_size})
    return found


def build_router(studio, auth: ApiAuth) -> APIRouter:
    """The /api/v1 routes over `studio` (its queue and home)."""
    queue, home = studio.queue, Path(studio.home)

    def authorized(request: Request) -> None:
        if not auth.allows(request.headers.get("authorization")):
            raise HTTPException(401, detail="missing or wrong API token: send 'Authorization: Bearer <token>' "
                                            "(the token is in the file .api-token in the studio's home, "
                                            "unless the studio was given one)",
                                headers={"WWW-Authenticate": 'Bearer realm="adaptor-studio"'})

    def get_job(job_id: str) -> Job:
        try:
            return queue.get(job_id)
        except KeyError:
            raise _error(404, f"no job {job_id!r}; GET {PREFIX}/jobs lists them") from None

    router = APIRouter(prefix=PREFIX, dependencies=[Depends(authorized)])

    @router.get("/jobs")
    def list_jobs():
        return {"jobs": [job_json(j, home) for j in queue.jobs()]}

    @router.post("/jobs", status_code=201)
    async def submit(request: Request):
        body = b""
        async for chunk in request.stream():  # never more than the limit in memory
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise _error(413, f"the request is over {MAX_BODY_BYTES} bytes; a config is a few KB")
        try:
            data = json.loads(body or b"null")
        except ValueError:
            raise _error(400, "the body must be JSON: {\"toml\": \"...\"} or {\"values\": {...}}") from None
        if not isinstance(data, dict):
            raise _error(400, "the body must be a JSON object: {\"toml\": \"...\"} or {\"values\": {...}}")
        name = data.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > 100 or not name.isprintable()):
            raise _error(400, "\"name\" must be a line of text of at most 100 characters")

        def queue_it() -> Job:  # the queue's first submit imports torch (seconds): off the event loop
            cfg = confine(read_submission(data.get("toml"), data.get("values"), data.get("set")), home)
            return queue.submit(cfg, name=name or None)

        try:
            job = await asyncio.to_thread(queue_it)
        except (ConfigError, UnsafePath) as e:
            raise _error(400, str(e)) from None
        except DiskFull as e:
            raise _error(507, str(e)) from None
        return job_json(job, home)

    @router.get("/jobs/{job_id}")
    def one_job(job_id: str):
        return job_json(get_job(job_id), home)

    @router.post("/jobs/{job_id}/cancel")
    def cancel(job_id: str):
        return job_json(queue.cancel(get_job(job_id).id), home)

    @router.post("/jobs/{job_id}/resume")
    def resume(job_id: str):
        try:
            job = queue.resume(get_job(job_id).id)
        except ConfigError as e:
            raise _error(409, str(e)) from None
        return job_json(job, home)

    @router.get("/jobs/{job_id}/events")
    def events(job_id: str, offset: int = 0, follow: bool = False):
        job = get_job(job_id)
        if offset < 0:
            raise _error(400, f"offset = {offset} must be 0 or more (the number of events already read)")

        async def lines():
            sent, quiet_since = offset, time.monotonic()
            while True:
                active = job.status in ACTIVE  # read before the events: the last ones are then all there
                new = (await asyncio.to_thread(_job_events, job))[sent:]
                for e in new:
                    yield json.dumps(e) + "\n"
                sent += len(new)
                if not follow or not active:
                    return
                if new:
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE_S:
                    quiet_since = time.monotonic()
                    yield "\n"
                await asyncio.sleep(FOLLOW_POLL_S)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    @router.get("/jobs/{job_id}/files")
    def files(job_id: str):
        return {"files": _run_files(get_job(job_id))}

    @router.get("/jobs/{job_id}/files/{relpath:path}")
    def download(job_id: str, relpath: str):
        path = _download_path(get_job(job_id), relpath)
        return FileResponse(path, filename=path.name, media_type="application/octet-stream")

    return router

