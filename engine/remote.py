"""Drive a studio from a script or another machine over its remote API (docs/remote-api.md).

    python -m engine.remote submit --url http://host:7860 config.toml [--set k=v] [--name N] [--follow]
    python -m engine.remote status [JOB] | logs JOB [--follow] | cancel JOB | resume JOB [--follow]
    python -m engine.remote fetch JOB [--out DIR] [--all]

The token comes from --token or $ADAPTOR_STUDIO_TOKEN (a studio started with --auth also takes --auth
user:password); the URL from --url or $ADAPTOR_STUDIO_URL. Standard library only: it runs where the engine's
dependencies are not installed. Exit codes: 0 ok (a followed job done), 1 a followed job that did not finish,
2 a refused request or a bad argument (one line on stderr, no traceback).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from engine.atomic import DiskFull, write_file
from engine.events import format_duration

TOKEN_ENV, URL_ENV = "ADAPTOR_STUDIO_TOKEN", "ADAPTOR_STUDIO_URL"
API = "/api/v1"
TIMEOUT_S = 60.0  # one request; a followed stream waits longer between lines (the studio sends keepalives)
FOLLOW_TIMEOUT_S = 120.0
SKIPPED_BY_DEFAULT = ("checkpoints",)  # resumable state, as big as the adaptor each: fetch --all takes them


class RemoteError(Exception):
    """A request the studio refused or could not be made; the message is the one line to show."""


class Client:
    def __init__(self, url: str, token: str | None = None, auth: str | None = None):
        parts = urllib.parse.urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RemoteError(f"--url {url!r} is not a studio address like http://127.0.0.1:7860")
        self.base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}{API}"
        if token:
            self.authorization = f"Bearer {token.strip()}"
        elif auth:
            self.authorization = "Basic " + base64.b64encode(auth.encode()).decode()
        else:
            raise RemoteError(f"no API token: give --token TOKEN or set ${TOKEN_ENV} (the studio keeps it in "
                              ".api-token in its home folder)")

    def _open(self, method: str, path: str, body: Any = None, timeout: float = TIMEOUT_S):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": self.authorization, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise RemoteError(f"{e.code}: {_detail(e)}") from None
        except urllib.error.URLError as e:
            raise RemoteError(f"cannot reach the studio at {self.base}: {e.reason}") from None
        except (TimeoutError, OSError) as e:
            raise RemoteError(f"cannot reach the studio at {self.base}: {e}") from None

    def call(self, method: str, path: str, body: Any = None) -> Any:
        with self._open(method, path, body) as response:
            try:
                return json.loads(response.read())
            except ValueError:
                raise RemoteError(f"{self.base}{path} did not answer JSON: is this an Adaptor Studio?") from None

    def events(self, job_id: str, follow: bool, offset: int = 0) -> Iterator[dict]:
        query = urllib.parse.urlencode({"offset": offset, "follow": int(follow)})
        with self._open("GET", f"/jobs/{_q(job_id)}/events?{query}",
                        timeout=FOLLOW_TIMEOUT_S if follow else TIMEOUT_S) as response:
            try:
                for line in response:
                    if line.strip():  # blank lines are the studio's keepalives
                        yield json.loads(line)
            except (TimeoutError, OSError) as e:
                raise RemoteError(f"the event stream of job {job_id} broke off: {e}") from None

    def download(self, job_id: str, relpath: str, dest: Path, size: int) -> None:
        def copy(tmp: Path) -> None:
            with self._open("GET", f"/jobs/{_q(job_id)}/files/{_q(relpath, safe='/')}") as response, \
                    open(tmp, "wb") as fh:
                while chunk := response.read(1 << 20):
                    fh.write(chunk)
        write_file(dest, copy, size)  # temp then rename: never a half-downloaded adaptor


def _q(text: str, safe: str = "") -> str:
    return urllib.parse.quote(text, safe=safe)


def _detail(e: urllib.error.HTTPError) -> str:
    try:
        detail = json.loads(e.read()).get("detail")
    except (ValueError, AttributeError, OSError):
        detail = None
    if isinstance(detail, list):  # FastAPI's account of a malformed request
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return str(detail or e.reason)


# ----------------------------------------------------------------------------- what is printed

def event_line(e: dict) -> str:
    t = e.get("type")
    if t == "start":
        first = f" from step {e['first_step']}" if e.get("first_step") else ""
        return f"start: {e.get('model', '?')} ({e.get('method', '?')}), {e.get('total_steps', '?')} steps{first}"
    if t == "step":
        loss, lr = e.get("loss"), e.get("lr")
        loss_text = f"{loss:.4f}" if isinstance(loss, (int, float)) else str(loss)
        lr_text = f"{lr:.2e}" if isinstance(lr, (int, float)) else str(lr)
        return (f"step {e.get('step')}/{e.get('total_steps')}  loss {loss_text}  lr {lr_text}  "
                f"ETA {format_duration(e.get('eta_s'))}")
    if t in ("checkpoint", "sample"):
        return f"{t}: {e.get('path')} (step {e.get('step')})"
    if t == "validation_loss":
        return f"validation loss {e.get('loss')} (step {e.get('step')})"
    if t in ("warning", "error"):
        hint = f"\n  hint: {e['hint']}" if e.get("hint") else ""
        return f"{t}: {e.get('message')}{hint}"
    if t == "done":
        return f"done in {format_duration(e.get('elapsed'))}"
    return json.dumps(e)


def job_line(job: dict) -> str:
    total = job.get("total_steps")
    steps = f"step {job.get('step')}/{total}" if total else "-"
    reason = f"  ({job['reason']})" if job.get("reason") else ""
    return f"{job['id']}  {job['status']:<11} {steps:<14} {job['name']}{reason}"


def _follow(client: Client, job_id: str, offset: int = 0) -> int:
    for e in client.events(job_id, follow=True, offset=offset):
        print(event_line(e), flush=True)
    job = client.call("GET", f"/jobs/{_q(job_id)}")
    print(job_line(job))
    if job.get("error"):
        print(f"error: {job['error']}" + (f"\n  hint: {job['hint']}" if job.get("hint") else ""), file=sys.stderr)
    return 0 if job["status"] == "done" else 1


def _read_config(path: str) -> str:
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RemoteError(f"config file {p} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RemoteError(f"config file {p} cannot be read: {e}") from None


def fetch(client: Client, job_id: str, out: Path | None, everything: bool) -> int:
    job = client.call("GET", f"/jobs/{_q(job_id)}")
    out = out or Path(PurePosixPath(job["run_dir"]).name or job_id)
    files = client.call("GET", f"/jobs/{_q(job_id)}/files")["files"]
    chosen = [f for f in files if everything or PurePosixPath(f["path"]).parts[0] not in SKIPPED_BY_DEFAULT]
    if not chosen:
        raise RemoteError(f"job {job_id} ({job['status']}) has no files to fetch yet")
    for f in chosen:
        rel = PurePosixPath(f["path"])
        if rel.is_absolute() or ".." in rel.parts:  # the studio lists none such; a fake one might
            raise RemoteError(f"the studio listed a file outside its run folder: {f['path']!r}")
        dest = out.joinpath(*rel.parts)
        client.download(job_id, f["path"], dest, int(f.get("size") or 0))
        print(f"{dest}  ({f.get('size', '?')} bytes)")
    if job["status"] != "done":
        print(f"note: job {job_id} is {job['status']}: these are the files its run folder holds now",
              file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get(URL_ENV, "http://127.0.0.1:7860"),
                        help=f"the studio (default: ${URL_ENV}, else http://127.0.0.1:7860)")
    common.add_argument("--token", default=os.environ.get(TOKEN_ENV),
                        help=f"API token (default: ${TOKEN_ENV}; prefer it: a command line is visible to others)")
    common.add_argument("--auth", metavar="USER:PASSWORD", help="a studio's --auth pair, instead of a token")
    p = argparse.ArgumentParser(prog="python -m engine.remote", description="Drive a remote Adaptor Studio.")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("submit", parents=[common], help="queue a training job from a TOML config")
    s.add_argument("config", help="TOML config; its paths are read inside the studio's home")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    s.add_argument("--name", help="the job's name in the queue (default: adaptor_name)")
    s.add_argument("--follow", action="store_true", help="print its events until it ends")
    s = sub.add_parser("status", parents=[common], help="the queue, or one job")
    s.add_argument("job", nargs="?")
    s = sub.add_parser("logs", parents=[common], help="a job's events")
    s.add_argument("job")
    s.add_argument("--follow", action="store_true", help="keep printing until the job ends")
    s.add_argument("--json", action="store_true", help="the events as JSON lines, as the studio sends them")
    for name, text in (("cancel", "stop a queued or running job"), ("resume", "queue a stopped job again")):
        s = sub.add_parser(name, parents=[common], help=text)
        s.add_argument("job")
        if name == "resume":
            s.add_argument("--follow", action="store_true", help="print its events until it ends")
    s = sub.add_parser("fetch", parents=[common], help="download a job's adaptor and run files")
    s.add_argument("job")
    s.add_argument("--out", type=Path, help="folder to write into (default: ./<run folder name>)")
    s.add_argument("--all", action="store_true", help="checkpoints too")
    return p


def run(args: argparse.Namespace) -> int:
    client = Client(args.url, args.token, args.auth)
    if args.command == "submit":
        body = {"toml": _read_config(args.config), "set": args.overrides, "name": args.name}
        job = client.call("POST", "/jobs", body)
        print(job_line(job), flush=True)
        return _follow(client, job["id"]) if args.follow else 0
    if args.command == "status":
        if args.job:
            job = client.call("GET", f"/jobs/{_q(args.job)}")
            for key, value in job.items():
                if value not in (None, "", {}):
                    print(f"{key}: {value}")
            return 0
        for job in client.call("GET", "/jobs")["jobs"]:
            print(job_line(job))
        return 0
    if args.command == "logs":
        for e in client.events(args.job, follow=args.follow):
            print(json.dumps(e) if args.json else event_line(e), flush=True)
        return 0
    if args.command in ("cancel", "resume"):
        job = client.call("POST", f"/jobs/{_q(args.job)}/{args.command}")
        print(job_line(job), flush=True)
        if not getattr(args, "follow", False):
            return 0
        seen = sum(1 for _ in client.events(job["id"], follow=False))  # the earlier attempts' events
        return _follow(client, job["id"], offset=seen)
    return fetch(client, args.job, args.out, args.all)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (RemoteError, DiskFull) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader has gone, so has the need to print
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # a local file that cannot be written (fetch)
        print(f"error: {e.filename}: {e.strerror}" if e.filename else f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
