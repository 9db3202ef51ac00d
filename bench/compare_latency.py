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
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ui.testing import StudioServer, launch_chromium, open_page, open_tab, start_training  # noqa: E402


# page-side milestones after the click (ms, performance.now()), noted by a MutationObserver as the page changes
_WATCH = """() => {
  const t0 = performance.now(), marks = {};
  // the previous grid and status stay until replaced: count only what follows a fresh grid / another status
  let generating = false, fresh = false;
  window.__compareMarks = marks;
  const note = (key, ok) => { if (ok && !(key in marks)) marks[key] = performance.now() - t0; };
  const look = () => {
    const grid = document.querySelector('#compare-grid .compare-grid');
    fresh = fresh || (!!grid && grid.dataset.done !== grid.dataset.total);
    if (fresh) {
      note('first_progress', !!document.querySelector('#compare-grid td[data-state="running"], #compare-grid td[data-state="done"]'));
      note('first_cell', !!document.querySelector('#compare-grid td[data-state="done"]'));
      note('all_cells', grid.dataset.total > 0 && grid.dataset.done === grid.dataset.total);
    }
    const done = (document.querySelector('#compare-status')?.innerText || '').includes('prompts x');
    generating = generating || !done;
    note('status', generating && done);
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, attributes: true,
                                                     characterData: true});
  document.querySelector('#compare-generate').click();
}"""


def _generate_seconds(page, grids: Path) -> tuple[float, dict]:
    """Seconds from the click to the new grid on the page (its PNG written and the status line saying so), and
    when the page showed the first cell's progress, the first image, all images and the status line (s)."""
    before = len(list(grids.glob("grid-*.png")))
    started = time.perf_counter()
    page.evaluate(_WATCH)
    while len(list(grids.glob("grid-*.png"))) <= before:
        page.wait_for_timeout(100)
    page.wait_for_function("() => 'status' in (window.__compareMarks || {})")
    seconds = time.perf_counter() - started
    marks = page.evaluate("() => window.__compareMarks")
    return seconds, {k: round(v / 1000, 1) for k, v in marks.items()}


def _worker_seconds(page) -> float | None:
    """The worker's own time for the grid, as the status line says it ("made in 7.3 s")."""
    found = re.search(r"made in ([\d.]+) s", page.locator("#compare-status").inner_text())
    return float(found.group(1)) if found else None


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
        page = open_page(browser, srv.url)
        page.set_default_timeout(60_000)
        started = time.perf_counter()
        start_training(page, max_train_steps=args.steps)
        page.wait_for_function("() => ['done', 'failed'].includes("
                               "document.querySelector('#run-progress-box')?.dataset.status)", timeout=1_800_000)
        figures["train_s"] = round(time.perf_counter() - started, 1)
        open_tab(page, "Compare")
        page.wait_for_function("() => document.querySelector('#compare-run input').value.includes('toy-star')")
        grids = Path(home) / "runs" / ".compare"
        for which in ("first", "second"):  # the second: the base model already loaded in the worker
            seconds, marks = _generate_seconds(page, grids)
            figures[f"{which}_compare_s"] = round(seconds, 1)
            figures[f"{which}_worker_s"] = _worker_seconds(page)
            figures[f"{which}_page_s"] = marks
        figures["load_after"] = round(os.getloadavg()[0], 2)
        browser.close()
    print(json.dumps(figures) if args.json else "\n".join(f"{k}: {v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
