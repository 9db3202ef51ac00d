"""Headless training: `python -m engine.train CONFIG.toml [--set key=value ...]`.

Works as a plain process or under `accelerate launch -m engine.train ...` (one process or several).
Exit codes: 0 done, 2 bad config/model/data (message names what to fix), 1 training failed (a full disk too).
"""
from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.train",
                                description="Train an adaptor from a TOML config (keys: --help-config).")
    p.add_argument("config", nargs="?", help="TOML config file (any key at top level or in any table)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set learning_rate=5e-5 (repeatable)")
    p.add_argument("--help-config", action="store_true", help="list every config key with default and range")
    p.add_argument("--check", action="store_true",
                   help="validate the config, print it resolved and pre-flight it on this machine (CUDA-only "
                        "options, packages, paths, hub ids offline, disk space); no training")
    return p


def _should_print(exc: BaseException) -> bool:
    """Once: not if the event log already showed it, and only from the first of several processes."""
    return not getattr(exc, "reported", False) and os.environ.get("RANK", "0") == "0"


def _quiet_libraries() -> None:
    """Keep the console to our own progress lines: library notices (e.g. transformers on torchvision) and
    weight-loading bars bury them. Errors still show; ADAPTOR_STUDIO_VERBOSE=1 shows everything."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if os.environ.get("ADAPTOR_STUDIO_VERBOSE"):
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog
    tlog.disable_progress_bar()
    dlog.disable_progress_bar()


def _check(cfg) -> int:
    """The resolved config on stdout (still TOML: the verdict is a comment), each problem on stderr; 2 if
    anything would stop the run."""
    import tomli_w

    from engine.config import to_toml_dict
    from engine.preflight import preflight
    report = preflight(cfg)
    print(tomli_w.dumps(to_toml_dict(cfg)))
    for p in report.problems:
        print(f"{p.severity}: {p.message}", file=sys.stderr)
    print(f"# {report.summary()}")
    return 0 if report.ok else 2


def _note_launch(cfg) -> None:
    """The [distributed] table takes effect through the launch (python -m engine.launch, the studio, engine.cluster):
    say so when this process's launch runs another number of processes than the config asks for."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.num_processes is not None and cfg.num_processes != world and os.environ.get("RANK", "0") == "0":
        print(f"note: the config asks for num_processes = {cfg.num_processes} but this launch runs {world}; "
              "`python -m engine.launch CONFIG` launches with the config's [distributed] table", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from engine.config import ConfigError, describe_fields, load_config

    if args.help_config:
        print(describe_fields())
        return 0
    if args.config is None and not args.overrides:
        build_parser().print_usage(sys.stderr)
        print("error: give a config file, or --set keys (e.g. --set train_data_dir=DIR)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.check:
        return _check(cfg)
    _note_launch(cfg)

    _quiet_libraries()
    from engine.atomic import DiskFull
    from engine.data import DataError
    from engine.families import ModelError
    from engine.loop import TrainingError, train

    try:
        train(cfg)
    except (ConfigError, ModelError, DataError, FileNotFoundError) as e:
        if _should_print(e):
            print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        if _should_print(e):
            print(f"training stopped: {e}\n  hint: {e.hint}", file=sys.stderr)
        return 1
    except DiskFull as e:  # before the run's event log was open (it reports the rest)
        if _should_print(e):
            print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; resume with --set resume_from_checkpoint=latest", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
