"""builtin:toy, the project's own small text-to-image model of a toy world (see world.py).

Its pipeline folder is committed (SHIPPED); `python -m engine.builtin.toy build` rebuilds it from scratch.
This module stays import-light: engine.builtin reads SHIPPED to resolve the name.
"""
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "model"
JUDGE_FILE = "judge.safetensors"
REPORT_FILE = "build_report.json"
