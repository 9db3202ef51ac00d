"""Screenshots of the tabs for the README: `.venv/bin/python docs/screenshots.py [--steps N] [--tabs ...]`.

Starts the real studio in a temporary home and, when the Run or Compare tab is asked for, trains the toy
preset for a few steps from the Training tab and makes a comparison grid; then captures each tab asked for
with ui.testing.screenshot_tabs (the function the browser tests use) into docs/. The Training tab is
captured in its Basic view, as a fresh page shows it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ui.testing import TAB_LABELS, StudioServer, launch_chromium, open_tab, screenshot_tabs, set_field  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100, help="training steps of the toy run shown")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent), help="folder for the PNGs")
    ap.add_argument("--tabs", nargs="+", default=list(TAB_LABELS), choices=TAB_LABELS, help="tabs to capture")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="studio-shots-") as home, StudioServer(Path(home)) as srv, \
            sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(srv.url)
        if {"Run", "Compare"} & set(args.tabs):  # they show a finished toy run and its comparison
            open_tab(page, "Training")
            set_field(page, "max_train_steps", args.steps)
            page.locator("#training-start").click()
            deadline = time.time() + 600
            while time.time() < deadline:
                status = page.locator("#run-progress-box").get_attribute("data-status")
                if status in ("done", "failed"):
                    break
                page.wait_for_timeout(1000)
            open_tab(page, "Compare")
            page.locator("#compare-generate").click()
            page.get_by_text("prompts x 3 columns").wait_for(timeout=300_000)
            page.evaluate("window.scrollTo(0, 0)")
        shots = screenshot_tabs(page, Path(args.out), prefix="studio-", labels=args.tabs)
        browser.close()
    for shot in shots:
        print(shot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
