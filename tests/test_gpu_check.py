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
