"""How long the Compare tab takes from "Generate comparison" to the grid, right after a training run, as a user
drives it: `python -m bench.compare_latency [--steps 30] [--json]`.

Starts the real studio (app.py, its own temporary home, the environment as launch.sh leaves it: no
OMP_NUM_THREADS), trains the toy preset from the Training tab, waits for the run to finish, then presses
Generate comparison on the Compare tab with the default prompts (2 prompts x 3 columns of 64x64 cells, 20 steps)
and times it until the grid is there; then once more (the worker warm). Prints the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ui.testing import StudioServer, launch_chromium, open_tab  # noqa: E402


def _generate_seconds(page, grids: Path) -> float:
    """Seconds from the click to the new grid on the page (its PNG written and the status line saying so)."""
    before = len(list(grids.glob("grid-*.png")))
    started = time.perf_counter()
    page.locator("#compare-generate").click()
    while len(list(grids.glob("grid-*.png"))) <= before:
        page.wait_for_timeout(100)
    page.locator("#compare-status").get_by_text("prompts x").wait_for()
    return time.perf_counter() - started


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="training steps of the toy run before the comparison")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    os.environ.pop("OMP_NUM_THREADS", None)  # as ./launch.sh runs the studio
    from playwright.sync_api import sync_playwright

    figures = {}
    with tempfile.TemporaryDirectory(prefix="compare-latency-") as home, StudioServer(Path(home)) as srv, \
            sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(srv.url)
        open_tab(page, "Training")
        box = page.locator("#field-max_train_steps input, #field-max_train_steps textarea").first
        box.fill(str(args.steps))
        box.press("Tab")
        started = time.perf_counter()
        page.locator("#training-start").click()
        page.wait_for_function("() => ['done', 'failed'].includes("
                               "document.querySelector('#run-progress-box')?.dataset.status)", timeout=1_800_000)
        figures["train_s"] = round(time.perf_counter() - started, 1)
        open_tab(page, "Compare")
        page.wait_for_function("() => document.querySelector('#compare-run input').value.includes('toy-star')")
        grids = Path(home) / "runs" / ".compare"
        figures["first_compare_s"] = round(_generate_seconds(page, grids), 1)
        figures["second_compare_s"] = round(_generate_seconds(page, grids), 1)
        figures["load_after"] = round(os.getloadavg()[0], 2)
        browser.close()
    print(json.dumps(figures) if args.json else "\n".join(f"{k}: {v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
