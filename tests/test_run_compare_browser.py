"""The Run and Compare tabs in headless Chromium (issue #16, items 7, 8, 9 and 12): the real studio in a
subprocess, one real toy training run under `accelerate launch`, real generation in the worker process.

Two finished runs are written into the home before the studio starts, as the engine writes them (events.jsonl,
config.toml, sample PNGs) and as the queue records them (jobs.json): a 500-step run with `validation_loss` events
and samples of two prompts at three steps with `prompt_index` (the engine's new event fields), and one whose
samples carry no prompt_index (an engine from before). The tests share one studio; the toy run is started once,
by the first test that needs it (module fixture `live`).
"""
from __future__ import annotations

import io
import json
import math
import random
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.config import save_config, validate
from engine.jobs import signal_group, stop_group
from engine.sampling.validation import file_name
from ui.testing import StudioServer, chromium_path, open_accordion, open_page, open_tab, start_training

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium_path() is None, reason="no Chromium: ./launch.sh test installs it")]
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect

PROMPTS = ["a red star on a white background", "a blue <b>star</b> & a moon"]  # the second must show escaped
STEPS, SAMPLE_STEPS, VAL_STEPS = 500, (1, 200, 400), (100, 200, 300, 400, 500)


def sample_name(step: int, prompt_index: int) -> str:
    """The file the engine writes for the first image of a prompt at a step (engine/periodic.py's tag)."""
    return file_name(f"epoch{step:03d}-step{step:06d}", prompt_index, 0)


def _seed_run(home: Path, name: str, created: float, *, prompt_index: bool) -> dict:
    """A finished run folder and its queue record (what the studio finds after it trained it)."""
    run = home / "runs" / name
    (run / "samples").mkdir(parents=True)
    job_dir = home / "runs" / ".queue" / f"20990101-00000{int(prompt_index)}-{name[:4]}"
    job_dir.mkdir(parents=True)
    cfg = validate({"pretrained_model_name_or_path": "builtin:toy", "train_data_dir": str(home), "adaptor_name": name,
                    "output_dir": str(home / "runs"), "report_to": "tensorboard", "resolution": 64})
    save_config(cfg, job_dir / "config.toml")
    save_config(cfg, run / "config.toml")
    (job_dir / "console.log").write_text("".join(f"log line {i}\n" for i in range(1, 121)))
    rng = random.Random(0)
    t = created + 1
    events = [{"type": "start", "time": t, "total_steps": STEPS, "first_step": 0}]
    for s in range(1, STEPS + 1):
        events.append({"type": "step", "time": t + s, "step": s, "total_steps": STEPS, "epoch": s, "it_per_s": 4.0,
                       "loss": 0.1 * math.exp(-s / 150) + 0.02 * rng.random(), "lr": 1e-4 * (1 - s / 1000),
                       "eta_s": 0.0, "peak_memory_mb": 600.0})
        if s in VAL_STEPS:
            events.append({"type": "validation_loss", "time": t + s, "step": s, "epoch": s,
                           "loss": 0.08 * math.exp(-s / 300)})
        if s in SAMPLE_STEPS:
            for i, prompt in enumerate(PROMPTS):
                path = run / "samples" / sample_name(s, i)
                Image.new("RGB", (64, 64), (250 * i, 40, s % 250)).save(path)
                extra = {"prompt_index": i, "settings": {"seed": 0, "width": 64, "height": 64}} if prompt_index else {}
                events.append({"type": "sample", "time": t + s, "path": str(path), "prompt": prompt, "step": s,
                               "epoch": s, **extra})
    events.append({"type": "done", "time": t + STEPS + 1, "step": STEPS, "total_steps": STEPS,
                   "outputs": {"run_dir": str(run), "config": str(run / "config.toml")}})
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    return {"id": job_dir.name, "name": name, "run_dir": str(run), "config_path": str(job_dir / "config.toml"),
            "status": "done", "created": created, "started": created, "ended": t + STEPS + 1, "returncode": 0,
            "attempts": 1, "queued_at": created, "earlier_s": STEPS + 1.0}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("studio-home")
    now = time.time() - 3600
    jobs = [_seed_run(home, "legacy-run", now - 100, prompt_index=False),
            _seed_run(home, "fake-run", now, prompt_index=True)]
    queue_file = home / "runs" / ".queue" / "jobs.json"
    queue_file.write_text(json.dumps({"version": 1, "jobs": jobs}))
    with StudioServer(home) as srv:
        yield srv
    for job in json.loads(queue_file.read_text())["jobs"]:  # jobs outlive the app: end ours (a test that failed)
        if job["status"] == "running":
            signal_group(job["pid"], signal.SIGTERM)
            stop_group(job["pid"], time.time() + 10)


def new_page(server, browser):
    return open_page(browser, server.url)


@pytest.fixture
def page(server, browser):
    p = new_page(server, browser)
    yield p
    p.close()


def pick_run(page, name: str) -> None:
    """Pick a run in the Run tab's dropdown as a user does."""
    open_tab(page, "Run")
    page.locator("#run-select input").click()
    page.get_by_role("option", name=re.compile(re.escape(name) + r" \(")).click()
    page.wait_for_function("n => (document.querySelector('#run-select input')?.value || '').includes(n)", arg=name)


def start_run(page, name: str, steps: int, **fields) -> None:
    start_training(page, adaptor_name=name, max_train_steps=steps, **fields)
    # the page switches to the Run tab on its own (the first submit imports torch into the app: seconds)
    expect(page.locator("#run-queue")).to_contain_text(name, timeout=90_000)


def numbers(page, selector: str) -> list[float]:
    return [float(t) for t in page.locator(selector).all_text_contents()]


def children_of(pid: int) -> list[str]:
    """Command lines of the process's children (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except (OSError, ValueError):
                continue
    return found


# ----------------------------------------------------------------------------- item 12: the plots

def test_plots_have_numeric_axes_a_log_scale_smoothing_and_validation_loss(page):
    pick_run(page, "fake-run")
    loss = page.locator("#run-loss-plot")
    expect(loss.locator(".series-validation circle")).to_have_count(len(VAL_STEPS))
    for plot in ("#run-loss-plot", "#run-lr-plot"):
        xs, ys = numbers(page, f"{plot} .tick-x text"), numbers(page, f"{plot} .tick-y text")
        assert 3 <= len(xs) <= 10 and 3 <= len(ys) <= 10, (plot, xs, ys)  # a few ticks, not one per point
        assert xs == sorted(set(xs)) and xs[0] <= 1 and xs[-1] >= STEPS, xs  # the steps, as numbers
        assert ys == sorted(set(ys)), ys
        spacing = {round(b - a, 12) for a, b in zip(xs, xs[1:])}
        assert len(spacing) == 1, xs  # evenly spaced: a numeric axis
    assert numbers(page, "#run-lr-plot .tick-y text")[-1] >= 1e-4 * (1 - 1 / 1000)
    assert loss.locator(".legend", has_text="validation loss").count() == 1

    page.locator("#run-log-scale input").check()
    expect(loss.locator(".studio-chart")).to_have_attribute("data-log", "true")
    ys = numbers(page, "#run-loss-plot .tick-y text")
    ratios = {round(math.log10(b / a), 3) for a, b in zip(ys, ys[1:])}
    assert len(ys) >= 2 and ys[0] > 0 and all(r > 0 for r in ratios), ys  # positive, multiplicative steps
    assert max(ys) / min(ys) >= 10 or ratios <= {round(math.log10(2), 3), round(math.log10(2.5), 3)}, ys

    def y_extent(series: str) -> float:
        points = loss.locator(f".series-{series} polyline").get_attribute("points").split()
        ys = [float(p.split(",")[1]) for p in points]
        return float(np.std(np.diff(ys)))  # how jagged the line is, in pixels

    slider = page.locator("#run-smoothing input[type=number]")
    slider.fill("0")
    slider.press("Enter")
    expect(loss.locator(".series-raw")).to_have_count(0)
    raw = y_extent("train")
    slider.fill("0.9")
    slider.press("Enter")
    expect(loss.locator(".series-raw")).to_have_count(1)
    assert y_extent("train") < raw / 3, "smoothing 0.9 should calm the line"


# ----------------------------------------------------------------------------- item 8: samples, prompt x step

def test_validation_images_are_a_grid_of_prompt_by_step(page, server):
    for name in ("fake-run", "legacy-run"):  # rows by prompt_index, and by prompt text without one
        pick_run(page, name)
        grid = page.locator("#run-samples .sample-grid table")
        expect(grid.locator("thead th")).to_have_count(1 + len(SAMPLE_STEPS))
        assert grid.locator("thead th").all_inner_texts()[1:] == [f"step {s}" for s in SAMPLE_STEPS]
        assert grid.locator("tbody th.prompt").all_inner_texts() == PROMPTS  # escaped, shown as written
        for r in range(len(PROMPTS)):
            row = grid.locator("tbody tr").nth(r)
            for c, step in enumerate(SAMPLE_STEPS):
                img = row.locator("td").nth(c).locator("img")
                assert img.count() == 1
                src = img.get_attribute("src")
                assert src.split("?")[0].endswith("/" + sample_name(step, r)), src
        page.wait_for_function("() => [...document.querySelectorAll('#run-samples img')]"
                               ".every(i => i.complete && i.naturalWidth === 64)")
    assert "<b>" not in server.log_tail()  # nothing odd logged; the tag was text, not markup
    assert page.locator("#run-samples b").count() == 0


# ----------------------------------------------------------------------------- item 7 and 9: a real run

@pytest.fixture(scope="module")
def live(server, browser):
    """The toy LoRA started from the Training tab of a fresh page: 40 steps, a checkpoint every 10 and an
    intermediate adaptor every 20."""
    p = new_page(server, browser)
    start_run(p, "live-toy", 40, checkpointing_steps=10, save_every_n_steps=20, validation_epochs=20,
              num_validation_images=1)
    p.close()
    return "live-toy"


def test_the_generation_worker_is_warm_before_the_first_comparison(server):
    """Item 9: the worker (interpreter, torch, diffusers) starts with the app, not on the first click."""
    deadline = time.time() + 60
    while time.time() < deadline and not any("engine.generate --serve" in c for c in children_of(server.proc.pid)):
        time.sleep(0.5)
    assert any("engine.generate --serve" in c for c in children_of(server.proc.pid)), children_of(server.proc.pid)
    assert not list((server.home / "runs" / ".compare").glob("grid-*.png"))  # and nobody asked for a grid


def test_run_tab_keeps_the_pick_pins_the_log_shows_device_outputs_and_asks_before_cancel(page, server, browser, live):
    open_tab(page, "Run")
    # a fresh page follows the newest run: the live one
    page.wait_for_function("() => (document.querySelector('#run-select input')?.value || '').includes('live-toy')",
                           timeout=90_000)
    expect(page.locator("#run-device")).to_contain_text("training on CPU")
    expect(page.locator("#run-tracker")).to_contain_text('report_to = "none"')

    # the log box stays scrolled to its bottom, now and after more lines arrive
    def log_at_bottom() -> bool:
        """The log box overflows and shows its last line (within 10 s: a refresh may be under way)."""
        page.wait_for_function(
            "() => { const e = document.querySelector('#run-log .log-tail'); return !!e && e.scrollHeight > "
            "e.clientHeight && Math.abs(e.querySelector('pre').getBoundingClientRect().bottom - "
            "e.getBoundingClientRect().bottom) <= 2; }", timeout=10_000)
        return True
    page.wait_for_function("() => (document.querySelector('#run-log pre')?.innerText || '').split('\\n').length > 30",
                           timeout=120_000)
    assert log_at_bottom()

    # the user's pick stays: over several refreshes of a running run, and when another run is queued
    pick_run(page, "fake-run")
    expect(page.locator("#run-follow input")).not_to_be_checked()  # picking stops following
    other = new_page(server, browser)
    start_run(other, "queued-toy", 300)
    other.close()
    expect(page.locator("#run-queue")).to_contain_text("queued-toy")
    page.wait_for_timeout(3000)
    assert "fake-run" in page.locator("#run-select input").input_value()
    expect(page.locator("#run-progress-box")).to_have_attribute("data-status", "done")
    assert "tensorboard --logdir" in page.locator("#run-tracker").inner_text()
    assert str(server.home / "runs" / "fake-run" / "logs") in page.locator("#run-tracker").inner_text()

    # Cancel asks first; "No" leaves the run alone
    pick_run(page, "queued-toy")
    page.locator("#run-cancel").click()
    confirm = page.locator("#run-cancel-confirm")
    expect(confirm).to_be_visible()
    expect(confirm).to_contain_text("Cancel queued-toy")
    page.locator("#run-cancel-no").click()
    expect(confirm).to_be_hidden()
    page.wait_for_timeout(1500)  # queued behind live-toy, or running if that has finished already
    assert page.locator("#run-progress-box").get_attribute("data-status") in ("queued", "running")
    page.locator("#run-cancel").click()
    page.locator("#run-cancel-yes").click()
    expect(page.locator("#run-progress-box")).to_have_attribute("data-status", "cancelled")

    # the live run, mid-run and done: intermediate adaptors, then both adaptor files, config and card to download
    pick_run(page, "live-toy")
    assert log_at_bottom()
    row = page.locator("#run-intermediates tr[data-step]").first
    row.wait_for(timeout=240_000)  # a checkpoint, while it trains
    expect(row.locator("button.compare-this")).to_have_text("Compare this one")
    expect(page.locator("#run-progress-box")).to_have_attribute("data-status", "done", timeout=300_000)
    outputs = page.locator("#run-outputs")
    run_dir = server.home / "runs" / "live-toy"
    for key, path in (("kohya", run_dir / "live-toy.safetensors"),
                      ("diffusers", run_dir / "diffusers" / "pytorch_lora_weights.safetensors"),
                      ("model_card", run_dir / "README.md"), ("config", run_dir / "config.toml")):
        link = outputs.locator(f"li[data-output='{key}'] a")
        expect(link).to_have_attribute("download", path.name)
        got = page.request.get(server.url + link.get_attribute("href"))
        assert got.ok and got.body() == path.read_bytes(), key  # the link downloads the file itself
    assert page.request.get(server.url + "gradio_api/file=" + str(server.home.parent / "x")).status in (403, 404)

    # "Compare this one": the Compare tab opens with that adaptor's file and the run's base: an intermediate
    # adaptor (save_every_n_steps) and a checkpoint (the preset keeps the newest two: 20 and 30 of 40 steps)
    saved = page.locator("#run-intermediates button.compare-this[data-kind='saved'][data-step='20']")
    expect(saved).to_have_count(1)
    saved.click()
    expect(page.locator("#compare-lora-file textarea, #compare-lora-file input").first).to_have_value(
        str(run_dir / "intermediate" / "live-toy-step000020" / "live-toy-step000020.safetensors"))
    open_tab(page, "Run")
    page.locator("#run-intermediates button.compare-this[data-kind='checkpoint'][data-step='30']").click()
    expect(page.locator("#compare-lora-file textarea, #compare-lora-file input").first).to_have_value(
        str(run_dir / "checkpoints" / "checkpoint-30" / "live-toy.safetensors"))
    expect(page.locator("#compare-base textarea, #compare-base input").first).to_have_value("builtin:toy")
    expect(page.locator("#compare-status")).to_contain_text("step 30")


# ----------------------------------------------------------------------------- item 9: Compare

def wait_finished(server, name: str, timeout: float = 400) -> None:
    events = server.home / "runs" / name / "events.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline and not (events.exists() and '"type": "done"' in events.read_text()):
        time.sleep(1)
    assert '"type": "done"' in events.read_text(), f"{name} did not finish"


def near(a, b, gap: float = 120) -> bool:
    """Whether two elements sit next to each other: their boxes closer than gap pixels vertically."""
    ra, rb = a.bounding_box(), b.bounding_box()
    return ra["y"] - gap <= rb["y"] + rb["height"] and rb["y"] - gap <= ra["y"] + ra["height"]


def test_compare_grid_fills_in_cell_by_cell_at_a_readable_size(page, server, live):
    wait_finished(server, live)
    open_tab(page, "Compare")
    page.wait_for_function("() => document.querySelector('#compare-run input').value.includes('live-toy')")
    prompts = ["a red star on a white background", "a blue star on a <black> background"]
    page.locator("#compare-prompts textarea").fill("\n".join(prompts))
    page.locator("#compare-generate").click()
    seen = set()  # (cells done, a cell's step) as the page showed them
    grid = page.locator("#compare-grid .compare-grid")
    deadline = time.time() + 300
    while time.time() < deadline and "prompts x" not in page.locator("#compare-status").inner_text():
        if grid.count():
            running = grid.locator("td[data-state='running'] span").all_inner_texts()
            seen.add((grid.get_attribute("data-done"), running[0] if running else ""))
        page.wait_for_timeout(100)
    assert "2 prompts x 3 columns" in page.locator("#compare-status").inner_text()
    assert len({done for done, _ in seen}) >= 3, seen  # the grid filled in while we watched
    assert any(re.fullmatch(r"step \d+/20", step) for _, step in seen), seen  # a cell's own progress
    table = grid.locator("table")
    assert table.locator("thead th").all_inner_texts() == ["prompt", "base", "adaptor", "adaptor + sks"]
    assert table.locator("tbody th.prompt").all_inner_texts() == prompts
    sizes = table.locator("img").evaluate_all("imgs => imgs.map(i => [i.complete, i.naturalWidth, i.clientWidth])")
    assert len(sizes) == 6 and all(ok and natural == 64 and shown >= 192 for ok, natural, shown in sizes), sizes
    assert near(page.locator("#compare-generate"), page.locator("#compare-status"))


def test_compare_draws_an_xy_grid_of_two_scales_by_two_checkpoints(page, server, live):
    """Issue #18: X = LoRA scales, Y = the run's checkpoints; the PNG keeps its settings in its text chunk."""
    wait_finished(server, live)
    open_tab(page, "Compare")
    page.wait_for_function("() => document.querySelector('#compare-run input').value.includes('live-toy')")
    open_accordion(page, "compare-xy-accordion")
    scales, status = page.locator("#compare-xy-scales textarea, #compare-xy-scales input").first, \
        page.locator("#compare-xy-status")
    # the accordion mounts its content when opened, and under load a value typed at once can be lost to that:
    # type once it shows, commit it by leaving the box, and make sure it stayed
    expect(scales).to_be_visible()
    page.wait_for_timeout(500)
    scales.fill("0.5, one")
    scales.press("Tab")
    page.wait_for_timeout(300)
    expect(scales).to_have_value("0.5, one")
    page.locator("#compare-xy-generate").click()
    expect(status).to_contain_text("'one' is not a number", timeout=30_000)  # said next to the button, nothing drawn
    assert near(page.locator("#compare-xy-generate"), status)
    scales.fill("0.5, 1")
    scales.press("Tab")
    page.locator("#compare-xy-steps input").fill("4")
    page.locator("#compare-xy-steps input").press("Tab")
    for step in (20, 30):
        page.locator("#compare-xy-adaptors input").click()
        page.get_by_role("option", name=f"checkpoint step {step}", exact=True).click()
    page.locator("#compare-xy-generate").click()
    expect(status).to_contain_text("2 scales x 2 adaptors", timeout=300_000)
    made = sorted((server.home / "runs" / ".compare").glob("xy-*.png"))
    assert len(made) == 1
    with Image.open(made[0]) as grid:
        params, size = json.loads(grid.text["parameters"]), grid.size
    run_dir = server.home / "runs" / live
    assert params["x"] == {"axis": "lora_scale", "values": [0.5, 1.0]}
    assert params["y"]["labels"] == ["checkpoint step 20", "checkpoint step 30"]
    assert params["y"]["values"] == [str(run_dir / "checkpoints" / f"checkpoint-{s}" / f"{live}.safetensors")
                                     for s in (20, 30)]
    assert params["num_inference_steps"] == 4 and params["base"] == ["builtin:toy"] * 2
    cells = sorted((made[0].parent / f"{made[0].stem}-cells").glob("*.png"))
    assert [c.name for c in cells] == ["r0-c0.png", "r0-c1.png", "r1-c0.png", "r1-c1.png"]
    w, h = Image.open(cells[0]).size
    # 2 x 2 cells under a header strip, right of a label strip
    assert 2 * h < size[1] < 3 * h and 2 * w < size[0] <= 2 * w + 240, (size, w, h)
    shown = page.locator("#compare-xy-image img")
    expect(shown).to_have_count(1)
    page.wait_for_function("() => { const i = document.querySelector('#compare-xy-image img'); "
                           "return i && i.complete && i.naturalWidth > 0; }")
    assert shown.evaluate("i => [i.naturalWidth, i.naturalHeight]") == list(size)


def paint_a_dot(page, editor, tries: int = 5) -> None:
    """A short brush stroke in the middle of the editor's image, as a mouse makes it; again until the canvas
    shows it (the editor redraws itself once the brush is sized to the image: a stroke during that is lost)."""
    canvas = editor.locator("canvas").first
    canvas.scroll_into_view_if_needed()
    for _ in range(tries):
        box = canvas.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        for dx in (1, 2, 3):
            page.wait_for_timeout(50)
            page.mouse.move(x + dx, y + dx)
        page.mouse.up()
        page.mouse.move(0, 0)  # the brush's outline off the canvas
        page.wait_for_timeout(500)
        shot = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
        if ((shot.max(axis=2) - shot.min(axis=2)) > 60).any():  # coloured pixels: paint on the white image
            return
    pytest.fail("the brush stroke never showed on the editor's canvas")


def test_compare_errors_show_by_their_button_and_edits_follow_the_trigger_choice(page, server, live, tmp_path):
    wait_finished(server, live)
    open_tab(page, "Compare")
    page.wait_for_function("() => document.querySelector('#compare-run input').value.includes('live-toy')")
    page.locator("#compare-steps input").fill("6")
    page.get_by_text("img2img and inpainting with the adaptor").click()
    page.locator("#compare-img2img").click()  # no image yet
    edit_status = page.locator("#compare-edit-status")
    expect(edit_status).to_contain_text("upload an image")
    assert near(page.locator("#compare-img2img"), edit_status)
    assert "upload an image" not in page.locator("#compare-status").inner_text()
    page.locator("#compare-prompts textarea").fill("  ")
    page.locator("#compare-generate").click()
    expect(page.locator("#compare-status")).to_contain_text("write at least one prompt")
    assert "prompt" not in edit_status.inner_text()

    source = tmp_path / "white.png"
    Image.new("RGB", (64, 64), "white").save(source)
    editor = page.locator("#compare-editor")
    editor.locator("input[type=file]").first.set_input_files(str(source))
    expect(edit_status).to_contain_text("Image 64x64")  # the brush and canvas are sized to the image now
    editor.get_by_label("Brush", exact=True).click()
    paint_a_dot(page, editor)
    page.locator("#compare-prompts textarea").fill("a red star on a white background")
    page.locator("#compare-use-trigger input").uncheck()
    page.locator("#compare-inpaint").click()
    expect(edit_status).to_contain_text(re.compile("inpaint done|paint the area"), timeout=180_000)
    for _ in range(2):  # Gradio's editor can drop a first stroke made while it redraws: the page says so, paint again
        if "paint the area" not in edit_status.inner_text():
            break
        paint_a_dot(page, editor)
        page.locator("#compare-inpaint").click()
        expect(edit_status).not_to_contain_text("paint the area")
    expect(edit_status).to_contain_text("inpaint done", timeout=180_000)
    assert "“a red star on a white background”" in edit_status.inner_text()
    compare_dir = server.home / "runs" / ".compare"
    mask = np.asarray(Image.open(sorted(compare_dir.glob("mask-*.png"))[-1]))
    assert mask.shape == (64, 64) and 0 < (mask > 127).mean() < 0.1, (mask > 127).mean()  # a dot, not half of it
    page.locator("#compare-use-trigger input").check()
    page.locator("#compare-img2img").click()
    expect(edit_status).to_contain_text("img2img done", timeout=180_000)
    assert "“sks, a red star on a white background”" in edit_status.inner_text()
    result = sorted(compare_dir.glob("img2img-*.png"))[-1]
    with Image.open(result) as im:
        assert im.size == (64, 64) and json.loads(im.info["parameters"])["prompt"].startswith("sks, ")
