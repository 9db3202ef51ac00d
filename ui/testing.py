"""Drive the real studio in headless Chromium: used by the browser tests and by docs/screenshots.py.

`StudioServer` runs `app.py` as a subprocess on a free port with its own home folder; `chromium()` opens
the system Chromium through Playwright (never `playwright install`: the browser comes from the OS).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from engine.paths import PROJECT_ROOT

TAB_LABELS = ("Dataset", "Training", "Run", "Compare")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_path() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (found := shutil.which(name)):
            return found
    return None


class StudioServer:
    """`python app.py --home HOME --port PORT --no-browser` until stop(); the pid is the app's own."""

    def __init__(self, home: Path, port: int | None = None, extra_env: dict | None = None):
        self.home = Path(home)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = self.home / "studio.log"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> "StudioServer":
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **self.extra_env}
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "app.py"), "--home", str(self.home),
                                      "--port", str(self.port), "--no-browser"],
                                     cwd=PROJECT_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the studio exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"the studio did not answer on {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def launch_chromium(playwright):
    path = chromium_path()
    if path is None:
        raise RuntimeError("no Chromium found: install it (apt-get install -y chromium) or set CHROMIUM=/path")
    return playwright.chromium.launch(executable_path=path, headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])


def open_tab(page, label: str) -> None:
    page.get_by_role("tab", name=label, exact=True).click()


def screenshot_tabs(page, out_dir: Path, prefix: str = "tab-") -> list[Path]:
    """One full-page PNG per tab, in tab order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    for label in TAB_LABELS:
        open_tab(page, label)
        page.wait_for_timeout(800)  # let plots and galleries lay out
        path = out_dir / f"{prefix}{label.lower()}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)
    return shots
