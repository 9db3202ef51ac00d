"""The speed benchmark runs on CPU with the tiny models and reports each row as one JSON object."""
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

ROWS = ["sd15-lora-512-b1", "sd15-lora-512-b16", "sdxl-lora-1024-b1", "sdxl-lora-1024-b8",
        "sdxl-lora-1024-b1-minmem", "sdxl-full-1024-b1", "flux1-lora-1024-b1", "flux1-lora-1024-b1-16gb",
        "flux1-lora-1024-b1-12gb", "sd35-lora-1024-b1"]
NEEDS_CUDA = ("sdxl-lora-1024-b1-minmem", "flux1-lora-1024-b1-16gb", "flux1-lora-1024-b1-12gb")


def _bench(*args) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "bench.train_speed", "--device", "cpu", "--tiny", "--json",
                           "--steps", "2", "--warmup", "1", "--images", "4", *args],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.strip().splitlines()]


def _assert_measured(r: dict) -> None:
    assert "error" not in r and "skipped" not in r, r
    for key in ("images_per_s", "s_per_it", "peak_memory_gb", "forward_tflop_per_image"):
        assert math.isfinite(r[key]) and r[key] > 0, (key, r)
    assert r["s_per_it"] == pytest.approx(r["batch"] / r["images_per_s"], rel=1e-2)
    assert r["resolution"] == 64 and r["device"] == "cpu"
    assert r["mfu"] is None and r["verdict"] == ""  # no known peak on a CPU; tiny figures are not judged


def test_train_speed_tiny_cpu_json_has_every_row():
    results = {r["row"]: r for r in _bench()}
    assert list(results) == ROWS
    for name, r in results.items():
        assert r["feature"] == "row settings"
        if name in NEEDS_CUDA:
            assert "CUDA" in r["skipped"]  # 8-bit Adam, the NF4 base
        else:
            _assert_measured(r)
    assert [results[n]["batch"] for n in ROWS] == [1, 16, 1, 8, 1, 1, 1, 1, 1, 1]
    assert results["sdxl-full-1024-b1"]["method"] == "full"
    # counted by torch's FLOP counter on the tiny UNets: SDXL's is the larger
    assert results["sdxl-lora-1024-b1"]["forward_tflop_per_image"] > results["sd15-lora-512-b1"][
        "forward_tflop_per_image"]


def test_features_flip_against_the_row(tmp_path):
    from bench.train_speed import ROWS as ROW_DEFS, flip, row_config

    # on a CPU the row trains in float32 with SDPA: bf16 is flipped on, SDPA off. The bf16 row is not run: a CPU
    # without bf16 instructions emulates it, slowly (bench/gpu_check's CPU smoke trains its bf16 paths)
    (row,) = [r for r in ROW_DEFS if r.name == "sd15-lora-512-b1"]
    args = SimpleNamespace(tiny=True, device="cpu", images=4, warmup=1, steps=2, rank=16)
    cpu_row = row_config(row, args, tmp_path)
    assert flip("bf16", cpu_row) == ("bf16: on", {"mixed_precision": "bf16"})
    results = _bench("--rows", "sd15-lora-512-b1", "--features",
                     "channels_last,sdpa,torch_compile")  # bucketing: test_speed_features
    by_feature = {r["feature"]: r for r in results}
    assert list(by_feature) == ["row settings", "channels_last: on", "sdpa: off", "torch_compile: on"]
    assert by_feature["channels_last: on"]["settings"] == {"channels_last": True}
    assert by_feature["sdpa: off"]["settings"] == {"attention": "eager"}
    for label in ("row settings", "channels_last: on", "sdpa: off"):
        _assert_measured(by_feature[label])
    assert "CUDA" in by_feature["torch_compile: on"]["skipped"]


def test_targets_are_judged_on_the_best_batch_size():
    from bench.train_speed import best_verdicts, target_of

    assert target_of("sdxl-lora-1024-b1-minmem") == "sdxl-lora-1024-b1-minmem"
    assert target_of("sdxl-lora-1024-b8") == "sdxl-lora-1024" and target_of("sdxl-full-1024-b1") is None
    rows = [{"row": "sdxl-lora-1024-b1", "feature": "row settings", "images_per_s": 9.0, "peak_memory_gb": 14.0},
            {"row": "sdxl-lora-1024-b8", "feature": "row settings", "images_per_s": 21.0, "peak_memory_gb": 40.0},
            {"row": "sdxl-lora-1024-b1-minmem", "feature": "row settings", "images_per_s": 5.0,
             "peak_memory_gb": 10.5},
            {"row": "sd15-lora-512-b16", "feature": "row settings", "images_per_s": 149.0, "peak_memory_gb": 9.0}]
    verdicts = {v["target"].split()[0]: v for v in best_verdicts(rows)}
    assert verdicts["sdxl-lora-1024"]["best_row"] == "sdxl-lora-1024-b8"
    assert verdicts["sdxl-lora-1024"]["verdict"] == "met"  # b1 alone is below, the best batch size is not
    assert verdicts["sd15-lora-512"]["verdict"] == "MISSED"
    assert verdicts["sdxl-lora-1024-b1-minmem"]["verdict"] == "MISSED"  # 10.5 GB > 10 GB
