"""python -m engine.caption DIR --captioner blip|blip2|git|florence2|wd14 --model ID_OR_PATH
[--mode overwrite|skip|append] [--trigger WORD] [captioner options...]

Every option of engine/caption/options.py is a flag (underscores as dashes; --no-X for a switch that is
on). Progress goes to the terminal; with --events, one JSON object per line goes to stdout instead (the
Dataset tab reads those) and the human lines go to stderr. Ctrl-C or SIGTERM stops after the batch in
hand: the captions written so far stay, and `--undo DIR` restores the folder as it was before the run.

Exit status: 0 done, 1 bad input (the message says what to fix), 130 cancelled.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import MISSING, fields

from engine.data import caption_files
from engine.data.items import DataError

from .options import CHOICES, HELP, CaptionError, CaptionOptions

def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.caption", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folder", help="dataset folder (images with sidecar caption files)")
    for f in fields(CaptionOptions):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=HELP[f.name])
        else:
            p.add_argument(flag, type=type(default), default=default, choices=CHOICES.get(f.name),
                           help=HELP[f.name])
    p.add_argument("--preview", type=int, metavar="N", help="caption the first N images and print them; write nothing")
    p.add_argument("--events", action="store_true", help="JSON lines on stdout (for the Dataset tab)")
    p.add_argument("--undo", action="store_true", help="restore the captions as they were before the last run")
    return p


def to_argv(folder: str, o: CaptionOptions, preview: int | None = None) -> list[str]:
    """The CLI arguments that rebuild `o` (what the Dataset tab runs)."""
    argv = [folder]
    for f in fields(CaptionOptions):
        value, flag = getattr(o, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv + (["--preview", str(preview)] if preview is not None else []) + ["--events"]


class Reporter:
    """Events as JSON lines (--events) and a human line per event on the terminal."""

    def __init__(self, events: bool):
        self.events = events
        self.human = sys.stderr if events else sys.stdout

    def __call__(self, type_: str, **fields) -> None:
        if self.events:
            print(json.dumps({"type": type_, "time": round(time.time(), 3), **fields}), flush=True)
        line = self.describe(type_, fields)
        if line:
            print(line, file=self.human, flush=True)

    @staticmethod
    def describe(t: str, e: dict) -> str:
        if t == "start":
            kept = f", {e['kept']} kept (already captioned)" if e.get("kept") else ""
            return (f"{'previewing' if e['preview'] else 'captioning'} {e['total']} images in {e['folder']} with "
                    f"{e['captioner']} ({e['model']}, mode {e['mode']}){kept}"
                    + (f"; backup in {e['backup']}" if e.get("backup") else ""))
        if t == "loading":
            how = {"download": "downloading it from the Hugging Face Hub", "cached": "from the local cache"}
            return f"loading {e['model']} ({how.get(e['source'], 'from its folder')})"
        if t == "loaded":
            return f"model loaded in {e['seconds']} s"
        if t in ("caption", "skipped"):
            bar = "#" * int(20 * e["done"] / max(e["total"], 1))
            what = e["caption"] if t == "caption" else f"SKIPPED: {e['reason']}"
            return f"[{bar:<20}] {e['done']}/{e['total']} {e['image']}: {what}"
        if t == "cancelled":
            done = "the captions written so far" if e["written"] is None else f"{e['written']} of {e['total']} captions written"
            return f"cancelled: {done} are kept (undo: --undo)"
        if t == "done":
            return "\n".join([f"done: {e['written']} captions written"
                              + (f", {e['skipped']} images skipped" if e.get("skipped") else "")] + e["report"])
        if t == "error":
            return f"error: {e['message']}"
        return ""


def main(argv: list[str] | None = None) -> int:
    from .run import caption_folder  # after argparse, so --help is instant

    args = parser().parse_args(argv)
    emit = Reporter(args.events)
    if args.undo:
        try:
            restored, removed, what = caption_files.undo_bulk(args.folder)
        except (DataError, OSError) as e:
            emit("error", message=str(e))
            return 1
        print(f"undid {what}: restored {len(restored)} caption files, removed {len(removed)}", file=emit.human)
        return 0
    stop = {"asked": False}

    def ask_stop(*_):
        if stop["asked"]:  # asked twice: stop now (every file written so far is whole)
            raise KeyboardInterrupt
        stop["asked"] = True

    signal.signal(signal.SIGTERM, ask_stop)
    signal.signal(signal.SIGINT, ask_stop)
    values = {f.name: getattr(args, f.name) for f in fields(CaptionOptions)}
    try:
        outcome = caption_folder(args.folder, CaptionOptions.from_dict(values), emit, lambda: stop["asked"],
                                 preview=args.preview)
    except (CaptionError, DataError, OSError) as e:
        emit("error", message=str(e))
        return 1
    except KeyboardInterrupt:
        emit("cancelled", written=None, total=None, backup=None)
        return 130
    return 130 if outcome.cancelled else 0


if __name__ == "__main__":
    sys.exit(main())
