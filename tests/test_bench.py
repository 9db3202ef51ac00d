"""The speed benchmark runs on CPU with the tiny models and reports each row as one JSON object."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_train_speed_tiny_cpu_json():
    rows = "sd15-lora-512-b1,sdxl-lora-1024-b8,sdxl-lora-1024-b1-minmem,sdxl-full-1024-b1"
    proc = subprocess.run([sys.executable, "-m", "bench.train_speed", "--device", "cpu", "--tiny", "--json",
                           "--rows", rows, "--steps", "3", "--warmup", "1", "--images", "4"],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["row"]: r for r in map(json.loads, proc.stdout.strip().splitlines())}
    assert list(results) == rows.split(",")
    for name in ("sd15-lora-512-b1", "sdxl-lora-1024-b8"):
        r = results[name]
        assert "error" not in r, r
        assert r["images_per_s"] > 0 and r["s_per_it"] > 0 and r["peak_memory_gb"] > 0
        assert r["resolution"] == 64 and r["forward_tflop_per_image"] > 0  # counted by torch's FLOP counter
        assert r["mfu"] is None  # no known peak on a CPU
    assert results["sdxl-lora-1024-b8"]["batch"] == 8
    assert "CUDA" in results["sdxl-lora-1024-b1-minmem"]["skipped"]
    assert "methods issue" in results["sdxl-full-1024-b1"]["skipped"]
