"""builtin:toy, the project's own small text-to-image model of a toy world (see world.py).

Its pipeline folder is committed (SHIPPED); `python -m engine.builtin.toy build` rebuilds it from scratch;
builtin:toy-dit, a small Flux.1 of the same world, is rebuilt by `... build-dit`.
This module stays import-light: engine.builtin reads SHIPPED to resolve the name.
"""
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "model"
SHIPPED_DIT = Path(__file__).resolve().parent / "dit-model"  # builtin:toy-dit (dit_build.py)
JUDGE_FILE = "judge.safetensors"
REPORT_FILE = "build_report.json"
