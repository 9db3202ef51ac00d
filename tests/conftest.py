"""Shared fixtures: an isolated cache (built-in models are built once per session), tiny datasets,
and a helper that trains through a real `accelerate launch` subprocess."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# Set before anything imports engine, and inherited by every subprocess.
_OWN_CACHE = None
if not os.environ.get("ADAPTOR_STUDIO_CACHE"):
    _OWN_CACHE = tempfile.mkdtemp(prefix="adaptor-studio-test-cache-")
    os.environ["ADAPTOR_STUDIO_CACHE"] = _OWN_CACHE
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _lacks_bytecode(module: str) -> bool:
    import importlib.util
    spec = importlib.util.find_spec(module)
    return bool(spec and spec.origin) and not os.path.exists(importlib.util.cache_from_source(spec.origin))


# Each test subprocess (training, studio, worker) imports torch, diffusers and transformers. uv installs no
# bytecode, and with PYTHONDONTWRITEBYTECODE set every process compiled ~10k files again (~5 s of CPU each):
# the subprocesses share one bytecode cache for the session instead.
_OWN_PYCACHE = None
if not os.environ.get("PYTHONPYCACHEPREFIX") and _lacks_bytecode("diffusers"):
    _OWN_PYCACHE = tempfile.mkdtemp(prefix="adaptor-studio-test-pycache-")
    os.environ["PYTHONPYCACHEPREFIX"] = _OWN_PYCACHE
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


def pytest_sessionfinish(session, exitstatus):
    for own in (_OWN_CACHE, _OWN_PYCACHE):
        if own:
            shutil.rmtree(own, ignore_errors=True)


# The files that take longest (minutes: trained module fixtures, studios in a browser), measured on 2 cores.
# Under `./launch.sh test` whole files go to the workers in collection order: these go first, so the run does not
# end waiting on one long file while the other worker idles.
LONGEST_FIRST = ("test_dit_families", "test_studio_newcomer", "test_studio_browser", "test_run_compare_browser",
                 "test_cli", "test_toy", "test_speed_features", "test_memory", "test_tools_browser", "test_bench",
                 "test_install", "test_train", "test_jobs", "test_studio_security", "test_distributed_fsdp")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: the rest keep their order


def make_images(folder: Path, n: int = 4, size=(64, 64), captions=True, seed=0):
    """n solid-ish coloured images with a square of another colour, and sidecar captions."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    for i in range(n):
        arr = np.zeros((size[1], size[0], 3), np.uint8)
        arr[:] = rng.integers(0, 255, 3)
        arr[size[1] // 4: size[1] // 2, size[0] // 4: size[0] // 2] = rng.integers(0, 255, 3)
        Image.fromarray(arr).save(folder / f"img{i}.png")
        if captions:
            (folder / f"img{i}.txt").write_text(f"a {colours[i % len(colours)]} square")
    return folder


@pytest.fixture
def tiny_data(tmp_path):
    return make_images(tmp_path / "data")


def accelerate_cmd(num_processes: int = 1) -> list[str]:
    """The launcher and its flags as the studio builds them (engine.launch) for num_processes, GPU ids unset:
    several processes on a CPU train data-parallel over gloo."""
    from engine.config import validate
    from engine.launch import LAUNCHER, launch_flags
    return [*LAUNCHER, *launch_flags(validate({"train_data_dir": ".", "num_processes": num_processes}))]


def run_training(config_args: list[str], num_processes: int = 1, expect_rc: int = 0, timeout: int = 600,
                 launch: bool = True):
    """`accelerate launch -m engine.train --set k=v ...`; returns the CompletedProcess. launch=False runs
    `python -m engine.train` itself (one process), sparing the launcher's own interpreter start (~2.5 s)."""
    cmd = (accelerate_cmd(num_processes) if launch else [sys.executable]) + ["-m", "engine.train"] + config_args
    # the worktree first; then what the caller added (e.g. an optional package installed to a folder)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != expect_rc:
        raise AssertionError(f"exit {proc.returncode} (wanted {expect_rc})\nstdout:\n{proc.stdout[-4000:]}\n"
                             f"stderr:\n{proc.stderr[-6000:]}")
    return proc


def sets(**kw) -> list[str]:
    out = []
    for k, v in kw.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, (list, tuple)):
            v = json.dumps(list(v))
        out += ["--set", f"{k}={v}"]
    return out


@pytest.fixture(scope="module")
def browser():
    """The system Chromium, headless, through Playwright: one per test module."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from ui.testing import launch_chromium
    # expect()'s 5 s default is shorter than a studio's answer on 2 busy cores (pages already wait 30 s)
    sync_api.expect.set_options(timeout=30_000)
    with sync_api.sync_playwright() as pw:
        b = launch_chromium(pw)
        yield b
        b.close()
