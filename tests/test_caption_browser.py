"""Auto-captioning from the Dataset tab in headless Chromium: the real studio, the real captioning
subprocess, the tiny WD14 tagger (a real ONNX model) and the captions showing up in the gallery."""
from __future__ import annotations

import pytest
from PIL import Image

from tests.tiny_tagger import make_tiny_tagger
from ui.testing import StudioServer, chromium_path, launch_chromium

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(chromium_path() is None, reason="no Chromium: ./launch.sh test installs it")]
sync_api = pytest.importorskip("playwright.sync_api")

# the tiny tagger's captions for square solid images (tests/tiny_tagger.py)
SOLID = {"red": ((255, 0, 0), "red"), "green": ((0, 255, 0), "green, hatsune miku"),
         "white": ((255, 255, 255), "white background, ^_^")}


def choose(page, elem_id: str, value: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=value, exact=True).click()


def caption_status(page) -> dict:
    box = page.locator("#caption-progress-box")
    return {k: box.get_attribute(f"data-{k}") for k in ("status", "done", "total")}


def test_auto_caption_a_folder_from_the_dataset_tab(tmp_path):
    tagger = make_tiny_tagger(tmp_path / "tagger")
    folder = tmp_path / "colours"
    folder.mkdir()
    for name, (rgb, _) in SOLID.items():
        Image.new("RGB", (48, 48), rgb).save(folder / f"{name}.png")
    (folder / "red.txt").write_text("my own words")

    with StudioServer(tmp_path / "home") as server, sync_api.sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(server.url)
        page.locator("#dataset-path textarea, #dataset-path input").first.fill(str(folder))
        page.locator("#dataset-load").click()
        page.get_by_text("Loaded 3 images").wait_for()

        page.get_by_text("Auto-caption (BLIP", exact=False).first.click()  # open the panel
        choose(page, "caption-captioner", "wd14")
        choose(page, "caption-mode", "skip")
        page.locator("#caption-model textarea, #caption-model input").first.fill(str(tagger))
        page.locator("#caption-trigger textarea, #caption-trigger input").first.fill("sks")

        # the preview shows captions and writes nothing
        page.locator("#caption-preview").click()
        page.wait_for_function("() => document.querySelector('#caption-progress-box')?.dataset.status === 'done'",
                               timeout=120_000)
        assert "Preview of 2 captions" in page.locator("#caption-status").inner_text()
        assert "sks, green, hatsune miku" in page.locator("#caption-table").inner_text()
        assert not (folder / "green.txt").exists()

        page.locator("#caption-run").click()
        page.wait_for_function(
            "() => { const b = document.querySelector('#caption-progress-box');"
            " return b && b.dataset.status === 'done' && !b.textContent.includes('preview'); }", timeout=120_000)
        assert caption_status(page) == {"status": "done", "done": "2", "total": "2"}
        assert "Wrote 2 captions" in page.locator("#caption-status").inner_text()
        # skip mode left the hand-written caption alone; the others are on disk and in the gallery
        assert (folder / "red.txt").read_text() == "my own words"
        assert (folder / "green.txt").read_text() == "sks, green, hatsune miku"
        assert (folder / "white.txt").read_text() == "sks, white background, ^_^"
        gallery = page.locator("#dataset-gallery")
        for text in ("green.png: sks, green, hatsune miku", "white.png: sks, white background, ^_^",
                     "red.png: my own words"):
            gallery.get_by_text(text, exact=False).first.wait_for()

        # one Undo puts the folder back as it was
        page.locator("#caption-undo").click()
        page.get_by_text("Undid auto-caption", exact=False).first.wait_for()
        assert not (folder / "green.txt").exists() and not (folder / "white.txt").exists()
        assert (folder / "red.txt").read_text() == "my own words"
        browser.close()
