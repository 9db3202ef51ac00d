"""Screenshots of the tabs for the README: `.venv/bin/python docs/screenshots.py [--steps N] [--tabs ...]`.

Starts the real studio in a temporary home. When the Run or Compare tab is asked for, it trains the toy preset
from the Training tab with two sample prompts (the engine puts the trigger word in front of each), samples and a
checkpoint every fifth of the run and an intermediate adaptor every other fifth; captures the Run tab mid-run (the samples as prompt x step and the
intermediate adaptors), waits for the end, and makes a comparison grid (also copied to studio-compare-grid.png).
The other tabs are captured with
ui.testing.screenshot_tabs (the function the browser tests use) into docs/; the Training tab in its Basic view,
as a fresh page shows it. Prints each PNG with its size (a full-page shot is as tall as the page).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ui.testing import (TAB_LABELS, StudioServer, launch_chromium, open_page, open_tab,  # noqa: E402
                        screenshot_tabs, start_training)

PROMPTS = ("a red star on a white background", "a star in the corner of a white background")


def _status(page) -> tuple[str | None, int]:
    box = page.locator("#run-progress-box")
    return box.get_attribute("data-status"), int(box.get_attribute("data-step") or 0)


def _train_and_shoot_run(page, steps: int, out: Path | None) -> list[Path]:
    """Train the toy preset; the Run tab's shot (into out, when given) is taken mid-run."""
    every = max(1, steps // 5)
    start_training(page, max_train_steps=steps, validation_prompt="\n".join(PROMPTS), sample_every_n_steps=every,
                   num_validation_images=1, checkpointing_steps=every, save_every_n_steps=2 * every)
    deadline = time.time() + 1200
    while time.time() < deadline:  # mid-run: samples and intermediate adaptors, the run still going
        status, step = _status(page)
        if status in ("done", "failed") or (status == "running" and step >= 0.6 * steps
                                            and page.locator("#run-intermediates tr").count() >= 3):
            break
        page.wait_for_timeout(1000)
    shots = []
    if out is not None:
        page.wait_for_timeout(1500)  # let the grid's images load
        shots.append(out / "studio-run.png")
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(shots[-1]), full_page=True)
    while time.time() < deadline and _status(page)[0] not in ("done", "failed"):
        page.wait_for_timeout(1000)
    return shots


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="training steps of the toy run shown")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent), help="folder for the PNGs")
    ap.add_argument("--tabs", nargs="+", default=list(TAB_LABELS), choices=TAB_LABELS, help="tabs to capture")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from PIL import Image
    from playwright.sync_api import sync_playwright

    shots = []
    with tempfile.TemporaryDirectory(prefix="studio-shots-") as home, StudioServer(Path(home)) as srv, \
            sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = open_page(browser, srv.url)
        page.set_default_timeout(60_000)
        rest = tuple(t for t in args.tabs if t != "Run")
        if "Training" in rest:  # first, as a fresh page shows it (the Basic view)
            shots += screenshot_tabs(page, out, prefix="studio-", labels=("Training",))
        if {"Run", "Compare"} & set(args.tabs):
            shots += _train_and_shoot_run(page, args.steps, out if "Run" in args.tabs else None)
        if "Compare" in rest:
            open_tab(page, "Compare")
            from engine.builtin.toy.arch import GUIDANCE  # the toy run's own guidance, filled in on opening
            page.wait_for_function(f"() => document.querySelector('#compare-guidance input')?.value === '{GUIDANCE:g}'")
            page.locator("#compare-generate").click()
            page.locator("#compare-status").get_by_text("prompts x 3 columns").wait_for(timeout=600_000)
            page.evaluate("window.scrollTo(0, 0)")
            grids = sorted((Path(home) / "runs" / ".compare").glob("grid-*.png"), key=lambda p: p.stat().st_mtime)
            if grids:  # the grid itself, for the README (base | adaptor | adaptor + trigger)
                shots.append(out / "studio-compare-grid.png")
                shutil.copyfile(grids[-1], shots[-1])
        shots += screenshot_tabs(page, out, prefix="studio-", labels=tuple(t for t in rest if t != "Training"))
        browser.close()
    for shot in shots:
        with Image.open(shot) as im:
            print(f"{shot} {im.width}x{im.height}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
