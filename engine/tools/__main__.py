"""`python -m engine.tools <verb> ...`: inspect, convert, resize, merge, merge-base, extract,
grid, publish.

A user error (a missing or unreadable file, a layout the tool does not know, a LoRA that does not fit its
base) prints one line naming what is wrong and exits 2, without a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.tools import ToolError


def _dynamic(s) -> None:
    s.add_argument("--method", choices=("sv_ratio", "sv_fro", "sv_cumulative"),
                   help="choose each module's rank dynamically (kohya's resize_lora.py rules), at most --rank")
    s.add_argument("--param", type=float, help="the rule's number: sv_ratio's ratio, sv_fro/sv_cumulative's fraction")


def _out(s, layouts=("kohya", "diffusers", "comfyui", "peft")) -> None:
    s.add_argument("--out", required=True, type=Path, help="the file to write (a folder for --layout peft)")
    s.add_argument("--layout", choices=layouts, help="the key layout to write")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.tools", description="LoRA tools.")
    sub = p.add_subparsers(dest="verb")

    s = sub.add_parser("inspect", help="layout, family, modules, rank/alpha, metadata; which loaders load it")
    s.add_argument("file", type=Path, help="a LoRA .safetensors file, a diffusers LoRA folder or a run folder")
    s.add_argument("--base", help="the base model, to check every key against it")
    s.add_argument("--modules", action="store_true", help="list every module")
    s.add_argument("--json", action="store_true", help="print the report as JSON")

    s = sub.add_parser("convert", help="rewrite a LoRA in another key layout (alpha kept)")
    s.add_argument("file", type=Path)
    _out(s)
    s.add_argument("--base", help="the base model (needed for ComfyUI / kohya LDM names of a non-standard model)")

    s = sub.add_parser("resize", help="lower a LoRA's rank by SVD")
    s.add_argument("file", type=Path)
    s.add_argument("--rank", type=int, required=True, help="the new rank (the most any module keeps)")
    s.add_argument("--conv-rank", type=int, help="the new rank of 3x3 convolutions (default: --rank)")
    _dynamic(s)
    _out(s)
    s.add_argument("--base", help="the base model (for LoHa / LoKr convolutions and LDM names)")
    s.add_argument("--verbose", action="store_true", help="a line per module")

    s = sub.add_parser("merge", help="several LoRAs into one")
    s.add_argument("files", nargs="+", type=Path)
    s.add_argument("--weights", nargs="+", type=float, help="one per file (default 1 each)")
    s.add_argument("--mode", choices=("concat", "svd"), default="concat",
                   help="concat: ranks add, exact; svd: cut the sum to --rank")
    s.add_argument("--rank", type=int, help="the rank of an svd merge")
    _dynamic(s)
    _out(s)
    s.add_argument("--base", help="the base model (for LDM names)")

    s = sub.add_parser("merge-base", help="LoRAs into a base model: a diffusers folder and a single file")
    s.add_argument("files", nargs="+", type=Path)
    s.add_argument("--base", required=True, help="the base model")
    s.add_argument("--weights", nargs="+", type=float, help="one per file (default 1 each)")
    s.add_argument("--out", required=True, type=Path, help="the folder to write: diffusers/ and NAME.safetensors")
    s.add_argument("--name", default="merged", help="the single file's name")
    s.add_argument("--allow-pickle", action="store_true", help="let a .ckpt / .pt base be read (it can run code)")

    s = sub.add_parser("extract", help="a LoRA from a fine-tune and its base")
    s.add_argument("tuned", help="the fine-tuned model, or one of our full fine-tune run folders")
    s.add_argument("--base", help="the base model (default: the run's)")
    s.add_argument("--rank", type=int, required=True)
    s.add_argument("--conv-rank", type=int, help="the rank of 3x3 convolutions (default: --rank)")
    s.add_argument("--min-diff", type=float, default=0.01,
                   help="a text encoder is taken only if a weight moved more than this (kohya's min_diff)")
    _dynamic(s)
    _out(s, ("kohya", "diffusers", "comfyui"))
    s.add_argument("--allow-pickle", action="store_true", help="let .ckpt / .pt models be read (they can run code)")
    s.add_argument("--verbose", action="store_true", help="a line per module")

    s = sub.add_parser("grid", help="an X/Y grid: a column per LoRA scale, a row per adaptor or checkpoint")
    s.add_argument("--adaptor", action="append", required=True,
                   help="a LoRA file, run folder or model (repeat: a row each)")
    s.add_argument("--scales", nargs="+", type=float, default=[1.0], help="the LoRA scales (a column each)")
    s.add_argument("--prompt", required=True)
    s.add_argument("--base", help="the base model of bare LoRA files")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--guidance", type=float, default=7.5)
    s.add_argument("--width", type=int)
    s.add_argument("--height", type=int)
    s.add_argument("--no-trigger", action="store_true", help="do not put each adaptor's trigger word in front")
    s.add_argument("--out", required=True, type=Path, help="the PNG to write")

    s = sub.add_parser("publish", help="push a finished run to the Hugging Face Hub (card + files)")
    s.add_argument("run", type=Path, help="the run folder")
    s.add_argument("--repo", required=True, help="owner/name of the Hub repository (made if missing)")
    s.add_argument("--out", type=Path, help="write the repository to this new folder instead of uploading it")
    s.add_argument("--token", help="a Hugging Face token with write access (default: HF_TOKEN or `hf auth login`)")
    s.add_argument("--private", action="store_true", help="make a new repository private")
    s.add_argument("--license", help="the license (default: the base model's, e.g. creativeml-openrail-m for SD 1.x)")
    return p


def _weights(files, weights) -> list[tuple[str, float]]:
    weights = weights or [1.0] * len(files)
    if len(weights) != len(files):
        raise ToolError(f"{len(files)} files but {len(weights)} weights: give one weight per file")
    return [(str(f), w) for f, w in zip(files, weights)]


def _kept(rows, verbose: bool) -> str:
    from engine.tools.resize import format_rows, summary

    if verbose:
        return format_rows([{"old_rank": r.get("old_rank", "-"), **r} for r in rows])
    s = summary(rows)
    return (f"{s['modules']} modules; Frobenius norm kept: mean {s['mean_fro_retained']:.2%}, least "
            f"{s['min_fro_retained']:.2%}; ranks {s['ranks']}")


def run(args) -> str:
    """The verb's output (what the CLI prints)."""
    dynamic = {"method": getattr(args, "method", None), "param": getattr(args, "param", None)}
    if args.verb == "inspect":
        from engine.tools.inspect import format_report, inspect
        report = inspect(args.file, args.base)
        return json.dumps(report, indent=2) if args.json else format_report(report, args.modules)
    if args.verb == "convert":
        from engine.tools import lora_file, names
        arch = names.model_arch(args.base) if args.base else None
        lf = lora_file.read(args.file, arch)
        layout = args.layout or ("kohya" if lf.layout != "kohya" else "diffusers")
        out = lora_file.write(lf, args.out, layout, arch=arch)
        return f"{out}: {len(lf.modules)} modules, {lf.layout} -> {layout}"
    if args.verb == "resize":
        from engine.tools.resize import resize_file
        out, rows = resize_file(args.file, args.out, args.rank, layout=args.layout, base=args.base,
                                conv_rank=args.conv_rank, **dynamic)
        return f"{out}\n{_kept(rows, args.verbose)}"
    if args.verb == "merge":
        from engine.tools.merge import merge_files
        out, rows = merge_files(_weights(args.files, args.weights), args.out, mode=args.mode, rank=args.rank,
                                layout=args.layout or "kohya", base=args.base, **dynamic)
        return str(out) + (f"\n{_kept(rows, False)}" if rows else "")
    if args.verb == "merge-base":
        from engine.tools.merge import merge_into_base
        outputs = merge_into_base(args.base, _weights(args.files, args.weights), args.out, args.name,
                                  allow_pickle=args.allow_pickle)
        return "\n".join(str(v) for v in outputs.values())
    if args.verb == "extract":
        from engine.tools.extract import extract_files
        out, rows = extract_files(args.tuned, args.base, args.out, args.rank, layout=args.layout or "kohya",
                                  conv_rank=args.conv_rank, min_diff=args.min_diff,
                                  allow_pickle=args.allow_pickle, **dynamic)
        return f"{out}\n{_kept(rows, args.verbose)}"
    if args.verb == "grid":
        from engine.tools.grid import xy_grid
        return xy_grid(args.adaptor, args.scales, args.prompt, args.out, base=args.base, seed=args.seed,
                       steps=args.steps, guidance=args.guidance, width=args.width, height=args.height,
                       use_trigger=not args.no_trigger)["grid"]
    if args.verb == "publish":
        from engine.tools import publish
        if args.out:
            return str(publish.write_folder(args.run, args.out, args.repo, args.license))
        return publish.upload(args.run, args.repo, token=args.token, private=args.private, license=args.license)
    raise ToolError(f"unknown verb {args.verb!r}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_usage(sys.stderr)
        print("error: give a verb: inspect, convert, resize, merge, merge-base, extract, grid, publish",
              file=sys.stderr)
        return 2
    from engine.train import _quiet_libraries
    _quiet_libraries()
    from engine.atomic import DiskFull
    try:
        print(run(args))
    except (ToolError, DiskFull) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
