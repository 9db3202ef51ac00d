"""Adaptor Studio entry point: `./launch.sh [--port N] [--listen --auth user:pass] [--share]`.

Binds 127.0.0.1 by default. Exposing the app to the network (--listen, --share) requires --auth.
Requests must name a host the studio serves and, from a browser, come from its own page (ui/guard.py).
The remote API (/api/v1, docs/remote-api.md) also needs its token (or an --auth pair) on every request.
The page opens with builtin:toy, the toy-star example dataset and presets/toy-lora.toml selected.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="./launch.sh", description="Adaptor Studio")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--listen", action="store_true", help="bind all interfaces (needs --auth)")
    p.add_argument("--auth", help="user:password, or a file holding user:password lines")
    p.add_argument("--share", action="store_true", help="a public Gradio share link (needs --auth)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--home", help="folder for runs/, datasets/ and presets/user/ (default: the project folder)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests for this host name (e.g. behind a reverse proxy); repeatable")
    p.add_argument("--api-token-file", metavar="FILE",
                   help="the remote API's token (default: $ADAPTOR_STUDIO_TOKEN, else HOME/.api-token, made on "
                        "first start); see docs/remote-api.md")
    return p.parse_args(argv)


def read_auth(value: str | None) -> list[tuple[str, str]] | None:
    if not value:
        return None
    lines = Path(value).read_text().splitlines() if Path(value).is_file() else [value]
    pairs = [tuple(line.split(":", 1)) for line in lines if ":" in line]
    if not pairs or any(not u or not pw for u, pw in pairs):
        raise SystemExit("--auth needs user:password (or a file of user:password lines)")
    return pairs


def _working_copy(example: Path, datasets: Path) -> Path:
    """The example dataset copied under datasets/ once, so caption edits never touch the shipped files."""
    import shutil

    from engine.atomic import temp_dir
    target = datasets / example.name
    if not target.exists():
        tmp = temp_dir(datasets, example.name)  # ordinary permissions, unlike mkdtemp's 0700
        shutil.copytree(example, tmp, dirs_exist_ok=True)
        tmp.rename(target)  # whole or not at all
    return target


def make_studio(home: str | None = None, url: str = ""):
    """The studio a fresh page opens with: builtin:toy, the toy-star example and presets/toy-lora.toml."""
    if home:
        os.environ["ADAPTOR_STUDIO_HOME"] = str(Path(home).resolve())
    from engine.jobs import JobQueue
    from engine.paths import PROJECT_ROOT, datasets_dir, runs_dir
    from ui.studio import Studio

    studio = Studio(default_preset=PROJECT_ROOT / "presets" / "toy-lora.toml",
                    default_dataset=_working_copy(PROJECT_ROOT / "examples" / "datasets" / "toy-star",
                                                  datasets_dir()),
                    default_prompts="a red star on a white background\na blue star on a black background",
                    queue=JobQueue(runs_dir()))
    studio.queue.start(url=url)  # FolderBusy if another studio runs this home's queue
    return studio


def main(argv=None) -> int:
    args = parse_args(argv)
    auth = read_auth(args.auth)
    if (args.listen or args.share) and not auth:
        print("refusing to expose the app without --auth user:password (it can read and write files here)",
              file=sys.stderr)
        return 2
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    from starlette.middleware import Middleware

    from engine.data.uploads import UploadLimits
    from engine.home_lock import FolderBusy
    from ui import CSS, build_app
    from ui.api_auth import ApiAuth, TokenError, load_token, token_files
    from ui.guard import HostOriginGuard, ServedHosts
    from ui.remote_api import PREFIX, build_router

    hosts = ServedHosts.for_launch(args.listen, args.allow_host)
    try:
        studio = make_studio(args.home, url=f"http://{host}:{args.port}")
    except FolderBusy as e:
        print(f"Adaptor Studio is already running on this home: {e}", file=sys.stderr)
        return 2
    print(f"Adaptor Studio (pid {os.getpid()}) starting on http://{host}:{args.port}", flush=True)
    try:
        try:
            token, token_source = load_token(studio.home, args.api_token_file)
        except TokenError as e:
            print(e, file=sys.stderr)
            return 2
        api = build_router(studio, ApiAuth(token, tuple(auth or ())))
        print(f"Remote API: http://{host}:{args.port}{PREFIX} (token: {token_source}; docs/remote-api.md)",
              flush=True)
        demo = build_app(studio)
        from ui.compare_tab import start_worker
        start_worker(studio)  # warm before the first comparison: the import of torch and diffusers takes seconds
        # no SSR proxy and no static workers: every request goes through the guard in this process
        demo.launch(server_name=host, server_port=args.port, auth=auth, share=args.share,
                    inbrowser=not args.no_browser, css=CSS, prevent_thread_lock=True, ssr_mode=False,
                    num_workers=0, max_file_size=UploadLimits.from_env().max_bytes,
                    # the guard wraps the whole app: the API's routes as well as Gradio's
                    app_kwargs={"middleware": [Middleware(HostOriginGuard, hosts=hosts)], "routes": api.routes},
                    allowed_paths=[str(studio.home)],  # run samples and grids live there
                    blocked_paths=[str(p) for p in token_files(studio.home, args.api_token_file)],
                    # Gradio's own "is localhost reachable" probe gives the first page 3 s; on a loaded machine
                    # the page takes longer and the studio quit. We bind it ourselves: skip the probe.
                    _frontend=False)
        if demo.share_url:  # the tunnel passes its own host name on
            hosts.add(demo.share_url)
        demo.block_thread()
    finally:
        studio.queue.stop()
        if studio.worker is not None:
            studio.worker.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
