"""The studio in headless Chromium, as a user drives it: the real app in a subprocess, real training jobs
under `accelerate launch`, real generation in the worker process."""
from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
from PIL import Image

from engine import jobs, presets
from engine.config import load_config
from engine.paths import PROJECT_ROOT
from ui.testing import (StudioServer, TAB_LABELS, chromium_path, field_input, open_page, open_tab,
                        screenshot_tabs, set_field)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium_path() is None, reason="no Chromium: ./launch.sh test installs it")]
sync_api = pytest.importorskip("playwright.sync_api")
TOY_PRESET = PROJECT_ROOT / "presets" / "toy-lora.toml"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("studio-home")
    with StudioServer(home) as srv:
        yield srv


@pytest.fixture
def page(server, browser):
    p = open_page(browser, server.url)
    yield p
    p.close()


def jobs_file(server) -> Path:
    return server.home / "runs" / ".queue" / "jobs.json"


def job_records(server) -> list[dict]:
    path = jobs_file(server)
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    return data["jobs"] if isinstance(data, dict) else data


def progress_state(page) -> dict:
    box = page.locator("#run-progress-box")
    return {"step": int(box.get_attribute("data-step") or 0), "total": int(box.get_attribute("data-total") or 0),
            "status": box.get_attribute("data-status")}


def wait_for_status(page, statuses: tuple[str, ...], timeout: float) -> dict:
    deadline = time.time() + timeout
    state = {}
    while time.time() < deadline:
        state = progress_state(page) if page.locator("#run-progress-box").count() else {}
        if state.get("status") in statuses:
            return state
        page.wait_for_timeout(500)
    raise AssertionError(f"run did not reach {statuses} within {timeout:.0f} s; last seen {state}")


def start_toy_run(page, name: str, steps: int, **fields) -> None:
    open_tab(page, "Training")
    set_field(page, "adaptor_name", name)
    set_field(page, "max_train_steps", steps)
    for key, value in fields.items():
        set_field(page, key, value)
    page.locator("#training-start").click()
    # the page switches to the Run tab on its own and follows the new run
    page.wait_for_function(
        "name => { const b = document.querySelector('#run-progress-box');"
        " const s = document.querySelector('#run-select input');"
        " return b && s && s.value.includes(name) && b.dataset.status !== 'none'; }", arg=name)


def test_tabs_render_with_the_toy_defaults_and_screenshots(page, tmp_path):
    for label in TAB_LABELS:
        assert page.get_by_role("tab", name=label, exact=True).is_visible()
    open_tab(page, "Training")
    assert field_input(page, "pretrained_model_name_or_path").input_value() == "builtin:toy"
    assert float(field_input(page, "learning_rate").input_value()) == pytest.approx(4e-3)
    assert field_input(page, "train_data_dir").input_value().endswith("toy-star")
    assert "1000 steps" in page.locator("#training-plan").inner_text()
    shots = screenshot_tabs(page, tmp_path)
    assert [p.name for p in shots] == [f"tab-{t.lower()}.png" for t in TAB_LABELS]
    for shot in shots:
        img = Image.open(shot).convert("L")
        assert img.size[0] >= 1000 and img.getextrema()[0] < 200  # drawn, not a blank page


def test_preset_loads_into_the_form_and_saves_identically(page, server):
    open_tab(page, "Training")
    page.locator("#training-preset input").fill("toy-style-lora")
    page.keyboard.press("Enter")
    page.locator("#training-preset-load").click()
    page.get_by_text("Loaded preset toy-style-lora").wait_for()
    assert field_input(page, "train_data_dir").input_value().endswith("datasets/toy-star")  # the Dataset tab's
    page.locator("#training-use-preset-data").click()  # the preset's own folder, as the user picks it
    page.wait_for_function("() => document.querySelector('#field-train_data_dir textarea, #field-train_data_dir "
                           "input').value.endsWith('toy-striped')")
    page.locator("#training-presets-toggle").click()
    page.locator("#training-preset-name input, #training-preset-name textarea").first.fill("roundtrip")
    page.locator("#training-preset-save").click()
    page.get_by_text("Saved user/roundtrip").wait_for()
    first = server.home / "presets" / "user" / "roundtrip.toml"
    expected = presets.preset_bytes(load_config(PROJECT_ROOT / "presets" / "toy-style-lora.toml"))
    assert first.read_bytes() == expected

    page.locator("#training-preset-load").click()  # the dropdown now holds user/roundtrip
    page.get_by_text("Loaded preset user/roundtrip").wait_for()
    page.locator("#training-preset-name input, #training-preset-name textarea").first.fill("roundtrip2")
    page.locator("#training-preset-save").click()
    page.get_by_text("Saved user/roundtrip2").wait_for()
    assert (server.home / "presets" / "user" / "roundtrip2.toml").read_bytes() == first.read_bytes()


def test_a_bad_value_shows_next_to_its_field_and_starts_nothing(page, server):
    open_tab(page, "Training")
    before = len(job_records(server))
    set_field(page, "resolution", 100)
    page.locator("#training-start").click()
    error = page.locator("#error-resolution")
    error.wait_for(state="visible")
    assert "resolution = 100" in error.inner_text() and "multiple of 8" in error.inner_text()
    # the field's own check may show its error before Start's answer arrives: wait for that answer
    page.locator("#training-start-status").get_by_text("Not started").wait_for(timeout=30_000)
    assert "Traceback" not in page.content()
    page.wait_for_timeout(1500)
    assert len(job_records(server)) == before


def test_toy_run_shows_live_progress_and_a_loss_plot_then_the_comparison(page, server):
    start_toy_run(page, "browser-toy", steps=40)  # samples at its end (validation_epochs 100)
    seen_steps, plot_sizes = [], []
    deadline = time.time() + 300
    while time.time() < deadline:
        state = progress_state(page)
        if state["status"] == "running" and state["step"] > 0:
            seen_steps.append(state["step"])
            plot_sizes.append(len(page.locator("#run-loss-plot").inner_html()))
        if state["status"] in ("done", "failed"):
            break
        page.wait_for_timeout(700)
    assert state["status"] == "done", f"{state}\n{page.locator('#run-log textarea').input_value()}"
    assert len(set(seen_steps)) >= 2 and seen_steps == sorted(seen_steps), seen_steps  # it moved while we watched
    assert len(set(plot_sizes)) >= 2  # the loss plot redrew as points arrived
    assert state["step"] == state["total"] == 40
    assert page.locator("#run-samples img").count() >= 1  # validation images appeared

    open_tab(page, "Compare")
    run_input = page.locator("#compare-run input")
    page.wait_for_function("() => document.querySelector('#compare-run input').value.includes('browser-toy')")
    assert "browser-toy" in run_input.input_value()
    # the run's own sample settings come with it (the toy preset samples at guidance 4, not Compare's 7.5)
    page.wait_for_function("() => document.querySelector('#compare-guidance input').value === '4'")
    page.locator("#compare-prompts textarea").fill("a red star on a white background\na blue star on a pink background")
    page.locator("#compare-steps input").fill("8")
    page.locator("#compare-generate").click()
    page.get_by_text("2 prompts x 3 columns").wait_for(timeout=180_000)
    assert "sks" in page.locator("#compare-status").inner_text()
    grids = sorted((server.home / "runs" / ".compare").glob("grid-*.png"))
    assert grids, "no grid written"
    with Image.open(grids[-1]) as grid:
        w, h = grid.size
    assert w >= 3 * 64 and h >= 2 * 64 and w > h  # three columns, two rows of 64 px images (plus labels)


def test_a_cancelled_run_shows_as_cancelled(page, server):
    start_toy_run(page, "browser-cancel", steps=300)
    deadline = time.time() + 120
    while time.time() < deadline and not (progress_state(page)["status"] == "running"
                                          and progress_state(page)["step"] > 0):
        page.wait_for_timeout(500)
    page.locator("#run-cancel").click()
    page.locator("#run-cancel-yes").click()  # Cancel asks first
    wait_for_status(page, ("cancelled",), timeout=60)
    assert re.search(r"browser-cancel.*cancelled", page.locator("#run-queue").inner_text(), re.S)
    record = next(j for j in job_records(server) if j["name"] == "browser-cancel")
    # "cancelled" means the whole process group is gone, not still dying (a zombie is gone: it holds nothing,
    # and a container's init may never reap it)
    assert not jobs.group_alive(record["pid"])


def test_a_killed_run_resumes_from_its_checkpoint_and_finishes(page, server):
    start_toy_run(page, "browser-resume", steps=30, checkpointing_steps=10)
    run_dir = server.home / "runs" / "browser-resume"
    deadline = time.time() + 180
    while time.time() < deadline and not list((run_dir / "checkpoints").glob("checkpoint-*")):
        page.wait_for_timeout(500)
    assert list((run_dir / "checkpoints").glob("checkpoint-*")), "no checkpoint appeared"
    record = next(j for j in job_records(server) if j["name"] == "browser-resume")
    os.killpg(record["pid"], signal.SIGKILL)  # as if the machine's OOM killer took it
    wait_for_status(page, ("interrupted",), timeout=60)
    page.locator("#run-resume").click()
    state = wait_for_status(page, ("done", "failed"), timeout=240)
    assert state["status"] == "done" and state["step"] == 30
    log = (run_dir / "train.log").read_text()
    assert re.search(r"resumed from .*checkpoint-\d+ at step \d+", log)
