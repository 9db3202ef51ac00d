"""The studio as a kohya_ss user meets it on day one (issue #16), in headless Chromium against the real app:
the caption editor, presets and the training folder, file modes, field errors, pre-flight, the Basic view,
auto-caption offline, the importers and the counts. One studio serves the module; the Hub is unreachable
for it (HF_ENDPOINT points at a closed port, HF_HUB_OFFLINE unset), as on a machine without network."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from engine.paths import PROJECT_ROOT
from ui.testing import (StudioServer, chromium_path, field_input, free_port, open_accordion, open_page, open_tab,
                        set_field, show_field)

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium_path() is None, reason="no Chromium: ./launch.sh test installs it")]
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
STAR = PROJECT_ROOT / "examples" / "datasets" / "toy-star"
VIEWPORT = {"width": 1400, "height": 1000}
# the Basic view for a LoRA: base model, dataset, trigger, resolution, epochs or steps, batch, learning
# rate, rank and alpha, precision, sample prompt, output name (and the method that picks the rest)
BASIC_LORA = {"method", "pretrained_model_name_or_path", "train_data_dir", "trigger_word", "resolution",
              "num_train_epochs", "max_train_steps", "train_batch_size", "learning_rate", "rank", "lora_alpha",
              "mixed_precision", "validation_prompt", "adaptor_name"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = {"HF_HUB_OFFLINE": "", "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    with StudioServer(tmp_path_factory.mktemp("newcomer-home"), extra_env=env) as srv:
        yield srv


@pytest.fixture
def page(server, browser):
    expect.set_options(timeout=30_000)  # a chain of events on a busy 2-core machine takes seconds
    p = open_page(browser, server.url, VIEWPORT)
    yield p
    p.close()


def copy_dataset(server, name: str) -> Path:
    target = server.home / "datasets" / name
    shutil.copytree(STAR, target)
    return target


def load_dataset(page, folder) -> None:
    open_tab(page, "Dataset")
    page.locator("#dataset-path textarea, #dataset-path input").first.fill(str(folder))
    page.locator("#dataset-load").click()
    expect(page.locator("#dataset-status")).to_contain_text(f"from {folder}")


def pick_image(page, index: int, key: str) -> None:
    page.locator("#dataset-gallery .thumbnail-item").nth(index).click()
    expect(page.locator("#dataset-status")).to_contain_text(f"Editing the caption of {key}")


def text_of(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_the_caption_editor_writes_only_the_file_it_shows(page, server):
    a, b = copy_dataset(server, "editor-a"), copy_dataset(server, "editor-b")
    (b / "0001.txt").write_text("b's own caption")
    load_dataset(page, a)
    pick_image(page, 1, "0001.png")
    assert text_of(page, "dataset-caption") == (a / "0001.txt").read_text().strip()
    load_dataset(page, b)  # the issue: the editor still held a's 0001.png, and Save wrote it into b's 0001.txt
    assert text_of(page, "dataset-selected") == "" and text_of(page, "dataset-caption") == ""
    page.locator("#dataset-caption-save").click()
    expect(page.locator("#dataset-status")).to_contain_text("Click an image in the gallery first")
    assert (b / "0001.txt").read_text() == "b's own caption"

    # the editor holds folder and file together: a folder typed (not loaded) since does not redirect Save
    pick_image(page, 0, "0000.png")
    page.locator("#dataset-caption textarea").fill("held in b")
    a_before = (a / "0000.txt").read_text()
    page.locator("#dataset-path textarea, #dataset-path input").first.fill(str(a))
    page.locator("#dataset-caption-save").click()
    expect(page.locator("#dataset-status")).to_contain_text(f"Saved 0000.txt in {b}")
    assert (b / "0000.txt").read_text() == "held in b" and (a / "0000.txt").read_text() == a_before

    # the file changed on disk since it was opened: Save asks first
    (b / "0000.txt").write_text("written by another program")
    page.locator("#dataset-caption textarea").fill("mine")
    page.locator("#dataset-caption-save").click()
    expect(page.locator("#dataset-status")).to_contain_text("0000.txt changed on disk since it was opened")
    assert (b / "0000.txt").read_text() == "written by another program"
    page.locator("#dataset-caption-overwrite").click()
    expect(page.locator("#dataset-status")).to_contain_text("Saved 0000.txt")
    assert (b / "0000.txt").read_text() == "mine"
    expect(page.locator("#dataset-caption-overwrite")).to_be_hidden()


def test_a_reloaded_page_counts_the_captions_as_they_are_now(page, server):
    caption = server.home / "datasets" / "toy-star" / "0003.txt"  # the folder a fresh page opens with
    before = caption.read_text()
    try:
        caption.write_text(before + ", zebra")
        page.reload()
        open_tab(page, "Dataset")
        expect(page.locator("#dataset-tags")).to_contain_text("zebra")  # the issue: the table of start-up
    finally:
        caption.write_text(before)


def test_rewritten_files_keep_their_permissions(page, server):
    folder = copy_dataset(server, "modes")
    (folder / "0000.txt").chmod(0o640)
    (folder / "0001.txt").unlink()
    load_dataset(page, folder)
    for index, text in ((0, "a red star, kept private"), (1, "a new caption file")):
        pick_image(page, index, f"000{index}.png")
        page.locator("#dataset-caption textarea").fill(text)
        page.locator("#dataset-caption-save").click()
        expect(page.locator("#dataset-status")).to_contain_text(f"Saved 000{index}.txt")
    ordinary = 0o666 & ~umask()
    assert (folder / "0000.txt").stat().st_mode & 0o777 == 0o640  # a replaced file keeps its own mode
    assert (folder / "0001.txt").stat().st_mode & 0o777 == ordinary  # a new one: 0666 less the umask

    open_tab(page, "Training")
    toggle = page.locator("#training-presets-toggle")
    if toggle.count():
        toggle.click()
    preset = server.home / "presets" / "user" / "modes.toml"
    page.locator("#training-preset-name textarea, #training-preset-name input").first.fill("modes")
    page.locator("#training-preset-save").click()
    expect(page.locator("#training-preset-status")).to_contain_text("Saved user/modes")
    assert preset.stat().st_mode & 0o777 == ordinary
    preset.chmod(0o640)
    first = preset.stat().st_ino
    page.locator("#training-preset-save").click()
    deadline = time.time() + 30
    while preset.stat().st_ino == first and time.time() < deadline:  # replaced by a rename: a new inode
        time.sleep(0.2)
    assert preset.stat().st_ino != first and preset.stat().st_mode & 0o777 == 0o640


def test_a_preset_keeps_the_dataset_tabs_folder(page, server):
    working_copy = str(server.home / "datasets" / "toy-star")
    open_tab(page, "Training")
    expect(page.locator("#training-on")).to_contain_text(f"Training on: {working_copy} (8 images, 8 captioned)")
    page.locator("#training-preset input").fill("toy-full")
    page.keyboard.press("Enter")
    page.locator("#training-preset-load").click()
    expect(page.locator("#training-preset-status")).to_contain_text("Loaded preset toy-full")
    assert field_input(page, "train_data_dir").input_value() == working_copy  # not the shipped example
    plan = page.locator("#training-plan")  # the issue: stale after a preset, and "1 steps per epoch"
    expect(plan).to_contain_text("200 steps in 200 epochs")
    expect(plan).to_contain_text("1 step per epoch")
    expect(page.locator("#training-on")).to_contain_text(f"Training on: {working_copy} (8 images")

    use = page.locator("#training-use-preset-data")  # the user may pick the preset's own folder
    expect(use).to_contain_text("examples/datasets/toy-star")
    use.click()
    expect(page.locator("#training-on")).to_contain_text("Training on: examples/datasets/toy-star (8 images")
    assert field_input(page, "train_data_dir").input_value() == "examples/datasets/toy-star"
    open_tab(page, "Dataset")
    expect(page.locator("#dataset-status")).to_contain_text(f"Loaded 8 images from {STAR}")


def test_every_problem_shows_under_its_field_with_a_link_from_the_summary(page, server):
    open_tab(page, "Training")
    set_field(page, "learning_rate", 5)
    error = page.locator("#error-learning_rate")
    expect(error).to_contain_text("learning_rate = 5.0 is out of range: it must be from 0 to 1")
    page.wait_for_timeout(1000)
    assert page.locator(".toast-body").count() == 0  # no Gradio popup that names no field and fades
    set_field(page, "lr_warmup_steps", -1)  # under Advanced
    expect(page.locator("#error-lr_warmup_steps")).to_contain_text("lr_warmup_steps = -1 is out of range")
    summary = page.locator("#training-summary")
    expect(summary).to_contain_text("2 settings to fix before training")

    open_accordion(page, "training-advanced")  # it was open: close it, and go back to the top
    page.locator("#training-advanced > button.label-wrap").click()
    expect(page.locator("#group-training")).to_be_hidden()
    page.evaluate("window.scrollTo(0, 0)")
    summary.locator("a[data-field=lr_warmup_steps]").click()
    box = page.locator("#field-lr_warmup_steps")
    expect(box).to_be_in_viewport()
    assert page.evaluate("document.activeElement.closest('#field-lr_warmup_steps') !== null")

    set_field(page, "learning_rate", 0.001)  # an old message clears when its value changes
    expect(error).to_be_hidden()
    expect(summary).not_to_contain_text("Learning rate")
    page.locator("#training-preset input").fill("toy-lora")
    page.keyboard.press("Enter")
    page.locator("#training-preset-load").click()  # and when a preset is loaded
    expect(page.locator("#error-lr_warmup_steps")).to_be_hidden()
    expect(summary).not_to_contain_text("to fix")


def test_check_runs_preflight_on_this_machine(page, server):
    import torch
    open_tab(page, "Training")
    cases = {"train_data_dir": ("/nonexistent/images", "/nonexistent/images does not exist"),
             "pretrained_model_name_or_path": ("someone/sd-model", "the Hub cannot be reached now")}
    if not torch.cuda.is_available():  # the issue: 8-bit Adam passed Check, then failed 38 s into the run
        cases |= {"optimizer": ("adamw8bit", "needs a CUDA GPU"), "mixed_precision": ("fp16", "needs a CUDA GPU")}
    for name, (value, _) in cases.items():
        set_field(page, name, value)
    jobs = server.home / "runs" / ".queue" / "jobs.json"
    before = jobs.read_text() if jobs.exists() else ""
    page.locator("#training-start").click()
    summary = page.locator("#training-summary")
    expect(summary).to_contain_text(f"{len(cases)} settings to fix before training")
    for name, (_, message) in cases.items():
        expect(page.locator(f"#error-{name}")).to_contain_text(message)  # the accordion opened to show it
    expect(page.locator("#training-start-status")).to_contain_text("Not started")
    assert (jobs.read_text() if jobs.exists() else "") == before

    originals = {"train_data_dir": str(server.home / "datasets" / "toy-star"),
                 "pretrained_model_name_or_path": "builtin:toy", "optimizer": "adamw", "mixed_precision": "no"}
    for name in cases:
        set_field(page, name, originals[name])
    page.locator("#training-check").click()
    expect(summary).to_contain_text("Ready: 1000 steps, about")
    for name in cases:
        expect(page.locator(f"#error-{name}")).to_be_hidden()


def test_the_basic_view_and_the_sticky_action_bar(page, server):
    open_tab(page, "Training")
    page.wait_for_timeout(500)
    height = page.evaluate("document.documentElement.scrollHeight")
    print(f"\nTraining tab, Basic view: {height} px tall in a {VIEWPORT['width']}x{VIEWPORT['height']} viewport")
    assert height < 1600  # it was 4,000-5,500 px with every field open
    shown = {e.get_attribute("id")[len("field-"):] for e in page.locator(".schema-field").all() if e.is_visible()}
    assert shown == BASIC_LORA
    assert page.locator("#group-training").count() == 0  # Advanced is closed
    info = page.locator("#field-learning_rate")
    assert info.locator("[data-testid=block-info]").inner_text() == "Learning rate"  # words, and the flag beside
    assert info.locator(".info-text code").first.inner_text() == "learning_rate"

    set_field(page, "method", "textual_inversion")  # what does not apply to the method goes
    expect(page.locator("#field-placeholder_token")).to_be_visible()
    expect(page.locator("#field-rank")).to_be_hidden()
    set_field(page, "method", "lora")
    show_field(page, "optimizer")
    expect(page.locator("#field-prodigy_d_coef")).to_be_hidden()
    set_field(page, "optimizer", "prodigy")
    expect(page.locator("#field-prodigy_d_coef")).to_be_visible()

    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    for button in ("training-start", "training-check", "training-preset-load", "training-import-toggle"):
        expect(page.locator(f"#{button}")).to_be_in_viewport()
    page.locator("#training-import-toggle").click()
    expect(page.locator("#training-import-text")).to_be_in_viewport()


@pytest.fixture(scope="module")
def short_blip(tmp_path_factory) -> Path:
    from tiny_generative import make_tiny_blip
    return make_tiny_blip(tmp_path_factory.mktemp("blip40") / "blip", positions=40)


PHASES = """() => { window.phases = [];
  new MutationObserver(() => { const b = document.querySelector('#caption-progress-box');
    if (b && b.dataset.phase) window.phases.push(b.dataset.phase); })
  .observe(document.querySelector('#caption-progress'), {subtree: true, childList: true, attributes: true}); }"""


def test_auto_caption_fails_fast_offline_and_fits_the_models_length(page, server, short_blip):
    folder = copy_dataset(server, "autocaption")
    load_dataset(page, folder)
    page.get_by_text("Auto-caption (BLIP", exact=False).first.click()
    status = page.locator("#caption-status")
    t0 = time.monotonic()
    page.locator("#caption-preview").click()  # no model given: the captioner's hub model, and no network
    expect(status).to_contain_text("the Hub cannot be reached now", timeout=30_000)
    assert time.monotonic() - t0 < 20, "it should fail at once, not after minutes of retries"

    page.locator("#caption-model textarea, #caption-model input").first.fill(str(short_blip))
    page.get_by_text("BLIP / BLIP-2 / GIT / Florence-2").click()
    page.locator("#caption-min-length input").fill("60")  # long captions, past the model's 40 positions
    page.evaluate(PHASES)
    page.locator("#caption-preview").click()
    expect(status).to_contain_text("Preview of 4 captions", timeout=120_000)
    expect(status).to_contain_text("its text model has 40 positions, so captions are at most 39 tokens")
    assert "IndexError" not in page.content()
    phases = page.evaluate("window.phases")
    assert "loading" in phases and phases.index("loading") < phases.index("captioning"), phases


KOHYA = """pretrained_model_name_or_path = "builtin:toy"
train_data_dir = "/nonexistent/kohya/img"
output_name = "from-kohya"
resolution = "64,64"
shuffle_caption = true
keep_tokens = 2
"""


def test_the_kohya_import_maps_and_shows_its_notes_as_written(page, server):
    open_tab(page, "Training")
    options = page.locator("#field-pretrained_model_name_or_path input")
    options.click()
    listed = page.locator("ul[role=listbox] li").all_inner_texts()
    assert "builtin:toy" in [t.strip("✓ \n") for t in listed] and not any("builtin:builtin:" in t for t in listed)
    options.press("Escape")

    page.locator("#training-import-toggle").click()
    page.locator("#training-import-text textarea").fill(KOHYA)
    page.locator("#training-import").click()
    report = page.locator("#training-import-status")
    expect(report).to_contain_text("Imported")
    assert "folders hold '<repeats>_<name>' sub-folders" in report.inner_text()  # escaped, not eaten as HTML
    assert "shuffle_caption" not in report.inner_text() and "keep_tokens" not in report.inner_text()
    show_field(page, "shuffle_caption")
    expect(page.locator("#field-shuffle_caption input")).to_be_checked()
    assert field_input(page, "keep_tokens").input_value() == "2"
    assert field_input(page, "adaptor_name").input_value() == "from-kohya"
