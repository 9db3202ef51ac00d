"""Adaptor Studio entry point: `./launch.sh [--port N] [--listen --auth user:pass] [--share]`.

Binds 127.0.0.1 by default. Exposing the app to the network (--listen, --share) requires --auth.
The studio tabs arrive with the studio issue; until then this page says how to train headless.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="./launch.sh", description="Adaptor Studio")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--listen", action="store_true", help="bind all interfaces (needs --auth)")
    p.add_argument("--auth", help="user:password, or a file holding user:password lines")
    p.add_argument("--share", action="store_true", help="a public Gradio share link (needs --auth)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    return p.parse_args(argv)


def read_auth(value: str | None) -> list[tuple[str, str]] | None:
    if not value:
        return None
    lines = Path(value).read_text().splitlines() if Path(value).is_file() else [value]
    pairs = [tuple(line.split(":", 1)) for line in lines if ":" in line]
    if not pairs or any(not u or not pw for u, pw in pairs):
        raise SystemExit("--auth needs user:password (or a file of user:password lines)")
    return pairs


def build_app():
    import gradio as gr

    from engine.builtin import builtin_names

    with gr.Blocks(title="Adaptor Studio") as demo:
        gr.Markdown(
            "# Adaptor Studio\n"
            "The studio tabs (Dataset, Training, Run, Compare) are on their way. Training works today "
            "from the command line:\n\n"
            "```\n./launch.sh train my.toml --set learning_rate=5e-5\n```\n\n"
            f"Built-in models: {', '.join(builtin_names())}. Every config key: "
            "`.venv/bin/python -m engine.train --help-config`.")
    return demo


def main(argv=None) -> int:
    args = parse_args(argv)
    auth = read_auth(args.auth)
    if (args.listen or args.share) and not auth:
        print("refusing to expose the app without --auth user:password (it can read and write files here)",
              file=sys.stderr)
        return 2
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    build_app().launch(server_name=host, server_port=args.port, auth=auth, share=args.share,
                       inbrowser=not args.no_browser)
    return 0


if __name__ == "__main__":
    sys.exit(main())
