"""bench/gpu_check.sh, the one-call check of every CUDA path, runs its whole plumbing on a CPU (--cpu-smoke):
every stage, the report in every format, every path listed, the CUDA-only ones skipped."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

RUN = ["sd15-bf16-sdpa", "sdxl-bf16"]  # two paths train (one per family); the others are listed, not run


@pytest.mark.slow
def test_cpu_smoke_writes_the_table_and_json_with_every_path(tmp_path):
    from bench.gpu_check import check_paths

    out = tmp_path / "out"
    proc = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu-smoke", "--only", ",".join(RUN), "--budget", "900",
                           "--out", str(out)],
                          cwd=ROOT, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.json", "gpu_check.md", "log.txt", "train_speed.json"]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert summary["mode"] == "cpu"
    assert [s["stage"] for s in summary["stages"]] == ["env", "build", "paths", "train_speed"]
    assert all(s["result"] == "ok" for s in summary["stages"]), summary["stages"]
    assert [b["result"] for b in summary["build"]] == ["ok", "ok"]

    paths = {r["path"]: r for r in summary["paths"]}
    listed = check_paths()
    assert list(paths) == [p.name for p in listed]
    for p in listed:
        r = paths[p.name]
        if p.cuda_only:
            assert r["result"] == "skipped (no CUDA)", r
        elif p.name in RUN:
            assert r["result"] == "ok", r
            assert r["loss_finite"] and r["steps"] == 2 and r["optimizer_steps"] == 2
            assert r["it_per_s"] > 0 and r["peak_gb"] > 0
            assert "up weights moved" in r["note"] and "/0 up" not in r["note"]
        else:
            assert r["result"] == "skipped (not in --only)", r
    table = (out / "gpu_check.md").read_text()
    assert "| path | result | loss | peak GB | it/s | note |" in table
    for p in listed:
        assert f"| {p.name} (" in table

    speed = json.loads((out / "train_speed.json").read_text())
    assert [r["row"] for r in speed] == ["sd15-lora-512-b1"] and speed[0]["images_per_s"] > 0
    assert "=== report" in (out / "log.txt").read_text()


def test_carried_wheels_install_only_what_is_missing_or_differs(tmp_path):
    """A wheel is installed where the package is missing or pinned differently; torch's own requirements and
    numpy only where ours is newer; a wheel for another Python is left out."""
    import importlib.metadata as md

    from bench.gpu_check import select_wheels

    tomli_w, numpy = md.version("tomli-w"), md.version("numpy")
    names = [f"tomli_w-{tomli_w}-py3-none-any.whl", "notinstalled_pkg-1.0-py3-none-any.whl",
             "numpy-1.0.0-py3-none-any.whl", "regex-2099.1.1-cp27-cp27mu-manylinux1_x86_64.whl",
             "filelock-0.1-py3-none-any.whl", "packaging-1.0-py3-none-any.whl"]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    rows = {r["package"]: r for r in select_wheels(tmp_path)}
    assert rows["tomli-w"]["action"] == "skip" and tomli_w in rows["tomli-w"]["why"]
    assert rows["notinstalled-pkg"]["action"] == "install"
    assert rows["numpy"]["action"] == "skip" and numpy in rows["numpy"]["why"]  # older than the one here
    assert rows["filelock"]["action"] == "skip"  # a torch requirement: never downgraded
    assert rows["packaging"]["action"] == "install"  # our pin differs from what is here
    assert rows["regex"]["action"] == "skip" and "not installable" in rows["regex"]["why"]


def test_report_of_a_gpu_run(tmp_path):
    """The report from a GPU run's stage files (made up here): device, wheels, build, a failed path with its
    error tail, paths the time budget cut, the bench's rows and target verdicts; exit 1 for the failure."""
    from bench.gpu_check import check_paths, main

    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "stages.tsv").write_text("install\tok\t0\t9\nenv\tok\t0\t12\nbuild\tok\t0\t40\npaths\tok\t1\t200\n"
                                     "train_speed\tstopped (time budget)\t124\t150\n")
    (work / "env.json").write_text(json.dumps({
        "python": "3.12.3", "torch": "2.11.0+cu130", "torch_cuda": "13.0", "cuda_available": True,
        "gpu": "NVIDIA H200", "capability": "9.0", "gpu_memory_gb": 139.8,
        "bitsandbytes": {"version": "0.50.2", "libs": ["libbitsandbytes_cuda130.so"]},
        "sdpa_kernels": {"flash_attention": "ok", "efficient_attention": "ok", "cudnn_attention": "ok", "math": "ok"}}))
    (work / "wheels.json").write_text(json.dumps({"status": "ok", "wheels": [
        {"package": "diffusers", "carried": "0.42.1", "action": "installed"},
        {"package": "accelerate", "carried": "1.15.0", "action": "skip"}]}))
    (work / "build.json").write_text(json.dumps([{"model": "builtin:random-sdxl", "result": "ok", "built": "on the GPU",
                                                  "seconds": 30.5, "params": {"unet": 2_567_463_684},
                                                  "params_total": 2_567_463_684}]))
    (work / "paths.jsonl").write_text(
        json.dumps({"path": "sd15-bf16-sdpa", "what": "bf16", "result": "ok", "loss": 0.12, "peak_gb": 7.5,
                    "it_per_s": 9.1, "note": "6/6 optimizer steps"}) + "\n"
        + json.dumps({"path": "sd15-adamw8bit", "what": "8-bit", "result": "FAIL", "note": "RuntimeError: no lib",
                      "error_tail": ["Traceback (most recent call last):", "RuntimeError: no lib"]}) + "\n"
        + json.dumps({"path": "sdxl-bf16", "what": "x", "result": "skipped (time budget)", "note": "9 s left"})
        + "\n{\"path\": \"sd15-torch")  # a line cut off by the stage's timeout
    (work / "stage-train_speed.log").write_text(
        "some warning\n"
        + json.dumps({"row": "sdxl-lora-1024-b8", "feature": "row settings", "images_per_s": 21.5, "s_per_it": 0.372,
                      "peak_memory_gb": 60.1, "mfu": 0.41, "verdict": "target images_per_s >= 20: met"}) + "\n"
        + json.dumps({"target": "sdxl-lora-1024 images_per_s >= 20", "best_row": "sdxl-lora-1024-b8",
                      "best_setting": "row settings", "value": 21.5, "verdict": "met"}) + "\n")
    assert main(["report", "--mode", "gpu", "--work", str(work), "--out", str(out)]) == 1  # the 8-bit Adam FAIL

    md = (out / "gpu_check.md").read_text()
    assert "NVIDIA H200 (sm_9.0, 139.8 GB); torch 2.11.0+cu130" in md
    assert "from the carried wheels: diffusers 0.42.1\n" in md
    assert "flash_attention: ok" in md and "libbitsandbytes_cuda130.so" in md
    assert "build builtin:random-sdxl: ok, on the GPU, 30.5 s, 2567 M params" in md
    assert "train_speed stopped (time budget) (150 s)" in md
    assert "| sd15-bf16-sdpa (bf16) | ok | 0.1200 | 7.50 | 9.10 | 6/6 optimizer steps |" in md
    assert "| sd15-adamw8bit (8-bit) | FAIL |" in md and "RuntimeError: no lib\n```" in md
    assert "| sdxl-bf16 (x) | skipped (time budget) |" in md
    assert "| sd15-torch-compile (" in md and "not run (its stage stopped first)" in md
    assert "| sdxl-lora-1024-b8 | row settings | 21.50 | 0.372 | 60.10 | 41.0% | target images_per_s >= 20: met |" in md
    assert "target sdxl-lora-1024 images_per_s >= 20: best 21.5 (sdxl-lora-1024-b8): met" in md
    summary = json.loads((out / "gpu_check.json").read_text())
    assert [p["path"] for p in summary["paths"]] == [p.name for p in check_paths()]
    assert [r.get("row") for r in json.loads((out / "train_speed.json").read_text())] == ["sdxl-lora-1024-b8", None]


@pytest.mark.parametrize("mode", ["gpu", "cpu"])
def test_every_path_is_a_valid_config(mode, tmp_path):
    """What each path passes to engine.train is accepted by the config reader, full size and tiny alike (the
    GPU paths cannot run here, so a misspelt key would otherwise first show on the GPU machine)."""
    from bench.gpu_check import check_paths, path_config, set_args
    from engine.config import load_config

    for p in check_paths():
        cfg = path_config(p, mode, tmp_path)
        args = set_args(cfg)
        loaded = load_config(None, [a for a in args if a != "--set"])
        for key, value in cfg.items():
            assert getattr(loaded, key) == value, (p.name, key)
        if mode == "gpu":
            assert loaded.pretrained_model_name_or_path.startswith("builtin:random-")
