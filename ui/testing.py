"""Drive the real studio in headless Chromium: used by the browser tests and by docs/screenshots.py.

`StudioServer` runs `app.py` as a subprocess on a free port with its own home folder; `chromium()` opens
the system Chromium through Playwright (never `playwright install`: the browser comes from the OS).
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
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

    def __init__(self, home: Path, port: int | None = None, extra_env: dict | None = None,
                 args: tuple[str, ...] = ()):
        self.home = Path(home)
        self.args = tuple(args)  # more app.py options, e.g. ("--auth", "user:password")
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
                                      "--port", str(self.port), "--no-browser", *self.args],
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


def launch_chromium(playwright, extra_args: tuple[str, ...] = ()):
    path = chromium_path()
    if path is None:
        raise RuntimeError("no Chromium found: install it (apt-get install -y chromium) or set CHROMIUM=/path")
    return playwright.chromium.launch(executable_path=path, headless=True,
                                      args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                            *extra_args])


def open_page(browser, url: str, viewport: dict | None = None):
    """A new page on the studio at `url` (1400x1000 unless told), once its tabs are drawn."""
    page = browser.new_page(viewport=viewport or {"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    page.goto(url)
    page.get_by_role("tab", name="Training", exact=True).wait_for()
    return page


def http_request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
                 timeout: float = 120) -> tuple[int, bytes]:
    """(status, body) of one request, with any headers (Host included: urllib would not send a forged one)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body,
                     headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def api_call(base_url: str, name: str, data: list, headers: dict | None = None,
             timeout: float = 120) -> tuple[str, object]:
    """Call the studio's endpoint /gradio_api/call/<name> as any HTTP client can: (the result stream's last
    event, e.g. "complete" or "error", and its data); ("http <status>", body text) when refused up front."""
    headers = {"Content-Type": "application/json", **(headers or {})}
    url = f"{base_url.rstrip('/')}/gradio_api/call/{name}"
    status, body = http_request(url, "POST", json.dumps({"data": data}).encode(), headers, timeout)
    if status != 200:
        return f"http {status}", body.decode(errors="replace")
    event_id = json.loads(body)["event_id"]
    status, body = http_request(f"{url}/{event_id}", headers=headers, timeout=timeout)
    if status != 200:
        return f"http {status}", body.decode(errors="replace")
    event, payload = "", None
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: "):
            text = line[len("data: "):]
            try:
                payload = json.loads(text)
            except ValueError:
                payload = text
    return event, payload


def open_tab(page, label: str) -> None:
    page.get_by_role("tab", name=label, exact=True).click()


def field_input(page, name: str):
    """The input of a Training field's widget (its text box, number box, dropdown or checkbox)."""
    return page.locator(f"#field-{name} input, #field-{name} textarea").first


def open_accordion(page, elem_id: str) -> None:
    """Open an accordion as a user would (its content is drawn only once it is open)."""
    toggle = page.locator(f"#{elem_id} > button.label-wrap")
    if "open" not in (toggle.get_attribute("class") or ""):
        toggle.click()


def show_field(page, name: str) -> None:
    """Make a Training field visible: the Basic view holds it, or Advanced and its group's accordion."""
    from engine.config import FIELD_BY_NAME
    if field_input(page, name).is_visible():
        return
    if page.locator("#training-advanced").count():
        open_accordion(page, "training-advanced")
    group = f"group-{FIELD_BY_NAME[name].group}"
    page.locator(f"#{group}").wait_for(state="attached")  # drawn once Advanced is open
    open_accordion(page, group)
    field_input(page, name).wait_for(state="visible")


def set_field(page, name: str, value) -> None:
    """Type a value into a Training field (a dropdown's choice is picked with Enter)."""
    show_field(page, name)
    box = field_input(page, name)
    box.fill(str(value))
    if box.get_attribute("role") == "combobox":  # a dropdown: click the choice, or take the text typed
        choice = page.get_by_role("option", name=str(value), exact=True)
        if choice.count():
            choice.first.click()
        else:
            box.press("Enter")
    box.press("Tab")  # a number commits its value on blur


def start_training(page, **fields) -> None:
    """Set these Training fields (Basic view or Advanced) and press Start training; the page then opens the Run
    tab on its own."""
    open_tab(page, "Training")
    for name, value in fields.items():
        set_field(page, name, value)
    # On two loaded cores a run once started with a typed number back at its preset value (checkpointing_steps,
    # in a CI run): type again any field that no longer shows what was typed before pressing Start.
    for name, value in fields.items():
        if field_input(page, name).input_value() != str(value):
            set_field(page, name, value)
    page.locator("#training-start").click()


def screenshot_tabs(page, out_dir: Path, prefix: str = "tab-", labels=TAB_LABELS) -> list[Path]:
    """One full-page PNG per tab (of `labels`), in tab order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shots = []
    for label in (t for t in TAB_LABELS if t in labels):
        open_tab(page, label)
        page.wait_for_timeout(800)  # let plots and galleries lay out
        path = out_dir / f"{prefix}{label.lower()}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)
    return shots
