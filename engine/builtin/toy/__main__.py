"""python -m engine.builtin.toy build|build-dit [--out DIR] [--work DIR] [--resume] [--smoke]
python -m engine.builtin.toy examples [--out DIR]"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.builtin.toy",
                                     description="Rebuild builtin:toy or builtin:toy-dit from scratch.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, what in (("build", "builtin:toy (VAE, judge, UNet, text encoder)"),
                       ("build-dit", "builtin:toy-dit (a Flux.1 transformer on builtin:toy's VAE and CLIP)")):
        b = sub.add_parser(name, help=f"train {what} and write the pipeline folder")
        b.add_argument("--out", type=Path, default=None, help="where the pipeline goes (default: the shipped folder)")
        b.add_argument("--work", type=Path, default=None, help="scratch folder (default: the cache)")
        b.add_argument("--resume", action="store_true", help="reuse the stages an earlier build finished in --work")
        b.add_argument("--smoke", action="store_true", help="a seconds-long run of every stage (needs --out)")
    e = sub.add_parser("examples", help="write the example datasets (toy-star, toy-striped, toy-subject)")
    e.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[3] / "examples" / "datasets")
    args = parser.parse_args(argv)
    if args.command == "examples":
        from engine.builtin.toy.world import write_examples

        for folder in write_examples(args.out):
            print(f"wrote {folder}")
        return 0
    if args.command == "build-dit":
        from engine.builtin.toy.dit_build import SHIPPED_DIT as shipped, build
    else:
        from engine.builtin.toy.build import SHIPPED as shipped, build

    if args.smoke and args.out is None:
        parser.error("--smoke needs --out: a smoke build must not replace the shipped model")
    build(out=args.out or shipped, work=args.work, recipe="smoke" if args.smoke else "full", resume=args.resume,
          log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
