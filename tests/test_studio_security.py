"""The studio's HTTP API treated as hostile (DESIGN.md §8, issue #13): the real app on 127.0.0.1 on a free
port, real HTTP requests to every endpoint the server lists, and a real Chromium page on another port.

Inputs are sorted by what they carry: PATH inputs must stay inside their folder (an image of the loaded
folder, a caption extension from the fixed set, a plain name under datasets/ or presets/user/, a run
under runs/), so a traversal value there is refused; FOLDER inputs name any folder or model the user has
(it is their machine) and are only read; TEXT inputs are captions, prompts and the like. A new input that
is in none of the sets fails the fuzz until someone decides which it is.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine.data.caption_files import caption_stamp
from ui.guard import ServedHosts, refusal
from ui.testing import StudioServer, api_call, chromium_path, free_port, http_request, launch_chromium

CANARY = "CANARY-3b1f: a secret outside the studio's home"
CLIMB = "./" + "../" * 12  # the prefix: from any folder up to /
PATH_INPUTS = {"dataset-caption-ext", "dataset-selected", "dataset-upload", "dataset-upload-name",
               "caption-caption-extension", "training-preset", "training-preset-name", "run-select",
               "compare-run", "compare-lora-file", "compare-editor", "compare-xy-adaptors", "utilities-name",
               "utilities-extract-name"}
# the folder an opened caption came from is any folder too: Save writes only an image's sidecar inside it;
# a preset's data source is a folder or a dataset id the form and the Dataset tab then read
# the Utilities tab reads a LoRA file anywhere (and a base model) and writes only utilities/NAME.safetensors
FOLDER_INPUTS = {"dataset-path", "caption-model", "compare-base", "dataset-selected-folder", "training-preset-data",
                 "utilities-file", "utilities-base"}
TEXT_INPUTS = {"dataset-caption", "dataset-caption-stamp", "dataset-bulk-text", "dataset-bulk-replace",
               "dataset-status", "caption-status",
               "caption-trigger", "caption-undesired-tags", "caption-tag-separator", "training-import-text",
               "compare-prompts", "compare-negative", "compare-xy-scales", "compare-xy-prompt"}
PATH_FIELDS = {"caption_extension", "output_dir", "class_data_dir", "resume_from_checkpoint", "adaptor_name",
               "accelerate_config_file"}
FOLDER_FIELDS = {"train_data_dir", "dataset_name", "pretrained_model_name_or_path",
                 "pretrained_vae_model_name_or_path", "pretrained_transformer_model_name_or_path"}
NOT_FUZZED = {"number", "checkbox", "slider"}  # gradio checks their type and range itself
# what a real page would send where the initial value is empty, so that only the fuzzed input is wrong
REALISTIC = {"dataset-selected": "0000.png", "dataset-caption": "a red star", "dataset-upload-name": "fuzzed",
             "training-preset-name": "fuzzed", "dataset-bulk-text": "sks"}


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("outside")
    (folder / "secret.txt").write_text(CANARY)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with StudioServer(tmp_path_factory.mktemp("home")) as srv:
        yield srv


@pytest.fixture(scope="module")
def star(server) -> Path:
    return server.home / "datasets" / "toy-star"


def traversals(outside: Path) -> dict[str, str]:
    return {"write": CLIMB + str(outside / "WRITTEN.sh").lstrip("/"),
            "read": CLIMB + str(outside / "secret.txt").lstrip("/"),
            "absolute": str(outside / "secret.txt")}


def file_data(path: str) -> dict:
    return {"path": path, "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}


@dataclass
class Input:
    kind: str  # path | folder | text | choice | skip
    elem_id: str
    component: str
    value: object

    def fuzzed(self, traversal: str):
        if self.component == "file":
            return [file_data(traversal)]
        if self.component == "imageeditor":
            return {"background": file_data(traversal), "layers": [], "composite": file_data(traversal)}
        return traversal


def classify(component: dict, endpoint: str) -> str:
    kind, props = component["type"], component["props"]
    elem_id = props.get("elem_id") or ""
    if kind in NOT_FUZZED:
        return "skip"
    if elem_id.startswith("field-"):
        name = elem_id[len("field-"):]
        return "path" if name in PATH_FIELDS else "folder" if name in FOLDER_FIELDS else (
            "choice" if kind == "dropdown" and not props.get("allow_custom_value") else "text")
    for names, found in ((PATH_INPUTS, "path"), (FOLDER_INPUTS, "folder"), (TEXT_INPUTS, "text")):
        if elem_id in names:
            return found
    if kind == "dropdown" and not props.get("allow_custom_value"):
        return "choice"  # gradio refuses values that are not among its choices
    raise AssertionError(f"input {elem_id or kind!r} of endpoint {endpoint} is not classified: add it to "
                         "PATH_INPUTS, FOLDER_INPUTS or TEXT_INPUTS in this test")


def endpoints(server) -> dict[str, list[Input]]:
    """Every endpoint the running studio lists, with its inputs as the page sends them (an opened caption:
    the toy-star working copy's 0000.png)."""
    star = server.home / "datasets" / "toy-star"
    realistic = {**REALISTIC, "dataset-selected-folder": str(star),
                 "dataset-caption-stamp": caption_stamp(star / "0000.txt")}
    config = json.loads(http_request(server.url + "config")[1])
    info = json.loads(http_request(server.url + "gradio_api/info")[1])["named_endpoints"]
    components = {c["id"]: c for c in config["components"]}
    found = {}
    for dep in config["dependencies"]:
        if not dep.get("api_name") or not dep.get("backend_fn"):  # a JavaScript-only event runs nothing here
            continue
        name = dep["api_name"]
        assert f"/{name}" in info, f"endpoint {name} is not callable through /gradio_api/call; fuzz it some other way"
        inputs = [components[i] for i in dep["inputs"] if components[i]["type"] != "state"]
        found[name] = [Input(classify(c, name), c["props"].get("elem_id") or "", c["type"],
                             realistic.get(c["props"].get("elem_id"), c["props"].get("value")))
                       for c in inputs]
    assert len(found) >= 30, f"the studio lists only {len(found)} endpoints: {sorted(found)}"
    return found


def refused(event: str, data) -> bool:
    """An HTTP or gradio error, a message saying so, or outputs left unchanged (gr.skip())."""
    if event != "complete":
        return True
    text = json.dumps(data, ensure_ascii=False)
    skipped = all(isinstance(x, dict) and x.get("__type__") == "update" and "value" not in x for x in data)
    return "Error" in text or "⚠" in text or skipped


def assert_contained(outside: Path, star: Path, what: str, event: str, data) -> None:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    assert CANARY not in text, f"{what} answered with the secret file's text"
    assert "Traceback" not in text, f"{what} answered with a traceback: {text[:500]}"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"], f"{what} wrote outside the home"
    assert not [p for p in star.iterdir() if p.name.endswith(".")], f"{what} made a folder such as '0000.'"


def test_the_host_and_origin_rules():
    local = ServedHosts.for_launch(listen=False)
    assert all(local.allows(h) for h in ("127.0.0.1:7860", "localhost", "LOCALHOST.:7860", "[::1]:7860"))
    assert not any(local.allows(h) for h in ("192.168.1.5:7860", "evil.example", "localhost.evil.example", "",
                                             None, "[::1", "127.0.0.1@evil.example"))
    listening = ServedHosts.for_launch(listen=True, extra=["studio.example.org"])
    assert listening.allows("192.168.1.5:7860") and listening.allows("[fe80::1]:7860")
    assert listening.allows("studio.example.org") and not listening.allows("evil.example")
    listening.add("https://abc123.gradio.live")  # the --share link, added once Gradio has it
    assert listening.allows("abc123.gradio.live")
    own = {"host": "127.0.0.1:7860", "origin": "http://127.0.0.1:7860"}
    assert refusal(own, "POST", local) is None
    assert refusal({"host": "127.0.0.1:7860"}, "POST", local) is None  # a script: no Origin, no Sec-Fetch-Site
    assert "only the studio's own page" in refusal({**own, "origin": "http://127.0.0.1:7861"}, "GET", local)
    assert "cross-site" in refusal({"host": "127.0.0.1:7860", "sec-fetch-site": "same-site"}, "POST", local)
    assert "not one this studio serves" in refusal({**own, "host": "evil.example:7860"}, "GET", local)


def test_a_forged_host_is_refused(server, star):
    before = (star / "0000.txt").read_bytes()
    for host in ("rebind.evil.example", f"rebind.evil.example:{server.port}", "127.0.0.1.evil.example"):
        status, body = http_request(server.url, headers={"Host": host})
        assert status == 403 and b"not one this studio serves" in body, (host, status, body[:200])
        event, _ = api_call(server.url, "save_caption", [str(star), ".txt", "0000.png",
                                                         caption_stamp(star / "0000.txt"), "rebound"],
                            headers={"Host": host})
        assert event == "http 403", (host, event)
    assert (star / "0000.txt").read_bytes() == before
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", f"LocalHost:{server.port}"):
        assert http_request(server.url, headers={"Host": host})[0] == 200, host


def test_a_request_from_another_page_is_refused(server, star):
    stamp = caption_stamp(star / "0000.txt")
    call = [str(star), ".txt", "0000.png", stamp, "from another page"]
    for origin in (f"http://127.0.0.1:{server.port + 1}", "http://localhost", "null", "https://evil.example"):
        assert api_call(server.url, "save_caption", call, headers={"Origin": origin})[0] == "http 403", origin
    own = (star / "0000.txt").read_text()  # the studio's own page saves (the same text)
    event, data = api_call(server.url, "save_caption", [str(star), ".txt", "0000.png", stamp, own],
                           headers={"Origin": f"http://127.0.0.1:{server.port}"})
    assert event == "complete" and "Saved `0000.txt`" in data[0]


def test_the_caption_extension_cannot_leave_the_dataset(server, star, outside):
    """The issue's report: a traversal caption extension wrote outside the home and read other files."""
    paths = traversals(outside)
    event, data = api_call(server.url, "save_caption", [str(star), paths["write"], "0000.png",
                                                        caption_stamp(star / "0000.txt"), "echo pwned"])
    assert refused(event, data), (event, data)
    assert_contained(outside, star, "save_caption", event, data)
    for name, args in (("current_caption", [str(star), paths["read"], "0000.png"]),
                       ("load_folder", [str(star), paths["read"], 64])):
        event, data = api_call(server.url, name, args)
        assert refused(event, data), (name, event, data)
        assert_contained(outside, star, name, event, data)


def test_every_endpoint_refuses_traversal_values(server, star, outside):
    """Each PATH input of each endpoint alone, with each traversal, is refused; then all string inputs of
    each endpoint at once (the page's own values elsewhere) leak nothing and write nothing outside."""
    found = endpoints(server)
    paths = traversals(outside)
    alone, together = ("write", "absolute"), ("read", "absolute")  # a relative climb is a climb: one each
    for name, inputs in sorted(found.items()):
        base = [i.value for i in inputs]
        for n, inp in enumerate(inputs):
            if inp.kind != "path":
                continue
            for label in alone:
                traversal = paths[label]
                what = f"{name}({inp.elem_id}={label})"
                event, data = api_call(server.url, name, base[:n] + [inp.fuzzed(traversal)] + base[n + 1:])
                assert refused(event, data), f"{what} was not refused: {event} {str(data)[:300]}"
                assert_contained(outside, star, what, event, data)
        fuzzable = [i.kind in ("path", "folder", "text") for i in inputs]
        for label in together:
            args = [i.fuzzed(paths[label]) if f else i.value for i, f in zip(inputs, fuzzable)]
            event, data = api_call(server.url, name, args)
            assert_contained(outside, star, f"{name}(every text input={label})", event, data)
    assert server.proc.poll() is None, server.log_tail()


# ----------------------------------------------------------------------------- a real browser (S2)

ATTACK = """async ([studio, args]) => {
  const out = {};
  const body = JSON.stringify({data: args});
  try {
    const r = await fetch(studio + "gradio_api/call/save_caption",
                          {method: "POST", headers: {"Content-Type": "application/json"}, body});
    out.json = r.status;
  } catch (e) { out.json = "blocked: " + e; }
  try {  // a "simple" request: no preflight and an opaque answer, but a server would still act on it
    await fetch(studio + "gradio_api/call/save_caption",
                {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body});
    out.simple = "sent";
  } catch (e) { out.simple = "blocked: " + e; }
  return out;
}"""


class _EvilPage(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"<!doctype html><title>another page on this machine</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.slow
@pytest.mark.skipif(chromium_path() is None, reason="no Chromium: ./launch.sh test installs it")
def test_pages_elsewhere_cannot_drive_the_studio_but_its_own_page_can(server, star):
    sync_api = pytest.importorskip("playwright.sync_api")
    caption = star / "0000.txt"
    before = caption.read_bytes()
    evil = ThreadingHTTPServer(("127.0.0.1", free_port()), _EvilPage)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    args = [str(star), ".txt", "0000.png", caption_stamp(caption), "PWNED by another page"]
    try:
        with sync_api.sync_playwright() as pw:
            # DNS rebinding as the browser sees it: the attacker's name now resolves to this machine, so its
            # page's own origin (same name, the studio's port) reaches the studio
            browser = launch_chromium(pw, ("--host-resolver-rules=MAP rebind.evil.example 127.0.0.1",))
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{evil.server_port}/")
            other_port = page.evaluate(ATTACK, [server.url, args])
            page.goto(f"http://rebind.evil.example:{server.port}/")
            rebinding = page.evaluate(ATTACK, ["/", args])
            page.wait_for_timeout(1500)  # anything queued would have run by now
            assert caption.read_bytes() == before, (other_port, rebinding)
            assert other_port["json"] == 403 and rebinding["json"] == 403, (other_port, rebinding)

            page = browser.new_page(viewport={"width": 1400, "height": 1000})  # the studio's own page
            page.set_default_timeout(30_000)
            page.goto(server.url)
            page.locator("#dataset-load").click()
            page.get_by_text("Loaded 8 images").wait_for()
            page.locator("#dataset-gallery .thumbnail-item").first.click()
            status = sync_api.expect(page.locator("#dataset-status"))
            status.to_contain_text("Editing the caption of 0000.png")  # before typing: it fills the box
            page.locator("#dataset-caption textarea").fill("a red star, edited in the studio")
            page.locator("#dataset-caption-save").click()
            status.to_contain_text("Saved 0000.txt")
            assert caption.read_text() == "a red star, edited in the studio"
            browser.close()
    finally:
        evil.shutdown()
        caption.write_bytes(before)
