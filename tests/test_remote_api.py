"""The remote API (issue 17, docs/remote-api.md) against the real studio on 127.0.0.1: real HTTP requests and
the real CLI client (`python -m engine.remote`, a subprocess), a real toy training job that is watched,
cancelled, resumed and fetched. One studio for the module, started with --auth so both kinds of credentials
can be tried; the toy run is eight one-image steps."""
from __future__ import annotations

import base64
import http.client
import json
import os
import stat
import subprocess
import sys
import urllib.parse

import pytest
from safetensors import safe_open

from engine.paths import PROJECT_ROOT
from ui.testing import StudioServer, http_request

USER, PASSWORD = "alice", "remote-test-pass"
# the toy preset made small: one image a step, no samples, a checkpoint every second step to resume from
TOY_SETS = ["train_data_dir=datasets/toy-star", "max_train_steps=8", "checkpointing_steps=2",
            "checkpoints_total_limit=2", "train_batch_size=1", "train_text_encoder=false", "validation_prompt="]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    # no token from the environment: the studio makes its own in the home
    with StudioServer(tmp_path_factory.mktemp("home"), args=("--auth", f"{USER}:{PASSWORD}"),
                      extra_env={"ADAPTOR_STUDIO_TOKEN": ""}) as srv:
        yield srv


@pytest.fixture(scope="module")
def token(studio) -> str:
    path = studio.home / ".api-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # a secret: only its owner reads it
    return path.read_text().strip()


def api(studio, method: str, path: str, token: str | None = None, body=None, headers: dict | None = None):
    """(status, parsed JSON or text) of one request to /api/v1<path>."""
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    status, raw = http_request(f"{studio.url.rstrip('/')}/api/v1{path}", method, data, headers)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def remote_cli(studio, token: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "ADAPTOR_STUDIO_TOKEN": token}
    return subprocess.run([sys.executable, "-m", "engine.remote", *args, "--url", studio.url], cwd=PROJECT_ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_refused_without_the_token_or_from_another_host_or_page(studio, token):
    status, body = api(studio, "GET", "/jobs")
    assert status == 401 and "Authorization: Bearer" in body["detail"]
    assert api(studio, "GET", "/jobs", token="x" * 43)[0] == 401
    assert api(studio, "POST", "/jobs", body={"toml": ""})[0] == 401  # nothing is read before the token
    basic = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    wrong = {"Authorization": "Basic " + base64.b64encode(f"{USER}:guess".encode()).decode()}
    assert api(studio, "GET", "/jobs", headers=wrong)[0] == 401
    status, answer = api(studio, "GET", "/jobs", headers=basic)  # the --auth pair, as --listen takes it
    assert status == 200 and answer == {"jobs": []}
    assert api(studio, "GET", "/jobs", token=token) == (200, {"jobs": []})
    # the token does not open the API to a rebinding page or to another page's POST
    status, text = api(studio, "GET", "/jobs", token=token, headers={"Host": "attacker.example"})
    assert status == 403 and "attacker.example" in text
    status, text = api(studio, "POST", "/jobs", token=token, body={"toml": ""},
                       headers={"Origin": "http://attacker.example"})
    assert status == 403 and "attacker.example" in text
    # the page's own file route, logged in, serves the home's files but not the token
    conn = http.client.HTTPConnection("127.0.0.1", studio.port, timeout=60)
    conn.request("POST", "/login", urllib.parse.urlencode({"username": USER, "password": PASSWORD}),
                 {"Content-Type": "application/x-www-form-urlencoded"})
    login = conn.getresponse()
    login.read()
    cookie = "; ".join(c.split(";")[0] for c in login.headers.get_all("set-cookie") or [])
    conn.close()
    assert login.status == 200 and cookie
    served = [http_request(f"{studio.url}gradio_api/file={path}", headers={"Cookie": cookie})
              for path in (studio.home / "datasets" / "toy-star" / "0000.txt", studio.home / ".api-token")]
    assert served[0] == (200, b"a red star on a white background\n")
    assert served[1][0] == 403 and token.encode() not in served[1][1]
    # the CLI: one line, no traceback, exit 2
    cli = remote_cli(studio, "y" * 43, "status")
    assert cli.returncode == 2 and cli.stderr.startswith("error: 401") and "Traceback" not in cli.stderr


def test_a_config_naming_a_path_outside_the_home_is_refused(studio, token, tmp_path):
    toml = (PROJECT_ROOT / "presets" / "toy-lora.toml").read_text()
    outside = tmp_path / "elsewhere"
    (outside / "datasets").mkdir(parents=True)
    for key, value in [("train_data_dir", str(outside)), ("train_data_dir", "../../../../../../etc"),
                       ("output_dir", str(outside)), ("output_dir", "runs/.queue"), ("output_dir", "datasets"),
                       ("pretrained_model_name_or_path", "/usr"), ("validation_data_dir", "~/"),
                       ("resume_from_checkpoint", str(outside)),
                       ("pretrained_transformer_model_name_or_path", "/usr/flux1-dev.safetensors"),
                       ("accelerate_config_file", str(outside / "accelerate.yaml"))]:
        status, body = api(studio, "POST", "/jobs", token, {"toml": toml, "set": [f"{key}={value}"]})
        assert status == 400 and body["detail"].startswith(f"{key} = "), (key, value, body)
    status, body = api(studio, "POST", "/jobs", token, {"values": {"train_data_dir": str(outside / "datasets")}})
    assert status == 400 and "train_data_dir" in body["detail"]
    status, body = api(studio, "POST", "/jobs", token, {"toml": toml + "\nlearning_rate = 'fast'\n"})
    assert status == 400 and "learning_rate" in body["detail"]  # validated as the engine would
    assert api(studio, "POST", "/jobs", token, {"toml": "#" * (2 << 20)})[0] == 413  # read no further
    assert api(studio, "GET", "/jobs", token) == (200, {"jobs": []})  # nothing was queued
    # every setting that names a file or folder is one confine() places (a new one must be added there)
    from engine.schema import FIELDS
    from ui.api_config import LOCAL_KEYS, SOURCE_KEYS
    named = {f.name for f in FIELDS if f.type is str and f.name.endswith(("_dir", "_path", "_file", "_checkpoint"))}
    assert named <= {*LOCAL_KEYS, *SOURCE_KEYS, "output_dir"}, named - {*LOCAL_KEYS, *SOURCE_KEYS}


def read_events_until(response: http.client.HTTPResponse, kind: str) -> list[dict]:
    seen = []
    for line in response:
        if line.strip():
            seen.append(json.loads(line))
            if seen[-1]["type"] == kind:
                return seen
    raise AssertionError(f"the stream ended before a {kind} event: {seen}")


def test_submit_watch_cancel_resume_and_fetch_the_toy_adaptor(studio, token, tmp_path):
    sets = [arg for s in TOY_SETS for arg in ("--set", s)]
    cli = remote_cli(studio, token, "submit", "presets/toy-lora.toml", *sets, "--name", "remote toy")
    assert cli.returncode == 0, cli.stderr
    job_id = cli.stdout.split()[0]
    status, job = api(studio, "GET", f"/jobs/{job_id}", token)
    assert status == 200 and job["name"] == "remote toy" and job["run_dir"] == "runs/toy-star"

    # watch: the stream follows the run until it is cancelled at its first checkpoint, then ends
    conn = http.client.HTTPConnection("127.0.0.1", studio.port, timeout=180)
    conn.request("GET", f"/api/v1/jobs/{job_id}/events?follow=1", headers={"Authorization": f"Bearer {token}"})
    response = conn.getresponse()
    assert response.status == 200
    seen = read_events_until(response, "checkpoint")
    assert seen[0]["type"] == "start" and seen[0]["total_steps"] == 8
    status, job = api(studio, "POST", f"/jobs/{job_id}/cancel", token)
    assert status == 200 and job["status"] == "cancelled", job
    rest = [json.loads(line) for line in response if line.strip()]  # returns: the job has ended
    conn.close()
    assert all(e["type"] != "done" for e in seen + rest)
    status, events = api(studio, "GET", f"/jobs/{job_id}/events?offset=0", token)
    assert status == 200 and len(events.splitlines()) == len(seen + rest)

    # resume, followed by the CLI to the end: it continues from the checkpoint
    cli = remote_cli(studio, token, "resume", job_id, "--follow")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "start: builtin:toy (lora), 8 steps from step" in cli.stdout and "done in" in cli.stdout
    status, job = api(studio, "GET", f"/jobs/{job_id}", token)
    assert job["status"] == "done" and job["attempts"] == 2 and job["outputs"]["kohya"] == "toy-star.safetensors"

    # fetch with the CLI: the adaptor, byte for byte, and it loads; checkpoints only with --all
    cli = remote_cli(studio, token, "fetch", job_id, "--out", str(tmp_path / "got"))
    assert cli.returncode == 0, cli.stderr
    got = tmp_path / "got" / "toy-star.safetensors"
    assert got.read_bytes() == (studio.home / "runs" / "toy-star" / "toy-star.safetensors").read_bytes()
    with safe_open(got, "np") as f:
        assert any("lora" in k for k in f.keys())
    assert (tmp_path / "got" / "diffusers" / "pytorch_lora_weights.safetensors").is_file()
    assert not (tmp_path / "got" / "checkpoints").exists()
    assert not [p for p in (tmp_path / "got").rglob("*") if p.name.startswith(".")]  # no temps left

    # the file routes keep to the run folder and its kinds of files
    (studio.home / "secret.txt").write_text("not for download")
    for bad in ["../../secret.txt", "..%2F..%2Fsecret.txt", "%2Fetc%2Fpasswd", "/etc/passwd", "checkpoints/../../..",
                ".earlier-run/toy-star.safetensors", "config.toml%00.png"]:
        status, body = api(studio, "GET", f"/jobs/{job_id}/files/{bad}", token)
        assert status in (400, 404) and "not for download" not in str(body), (bad, status, body)
    status, body = api(studio, "GET", f"/jobs/{job_id}/files/../../../.api-token", token)
    assert status == 400 and token not in str(body)
    assert api(studio, "GET", "/jobs/..%2F..%2F.api-token/files", token)[0] == 404
    status, _ = api(studio, "GET", f"/jobs/{job_id}/files/README.md", token)
    assert status == 200


def test_a_remote_config_reads_its_paths_inside_the_home(tmp_path):
    """What confine() makes of each kind of value (no studio needed: the HTTP tests above show it is applied)."""
    from engine.config import ConfigError, validate
    from ui.api_config import confine

    home = tmp_path / "home"
    (home / "datasets" / "mine").mkdir(parents=True)
    cfg = confine(validate({"train_data_dir": "datasets/mine", "pretrained_model_name_or_path": "builtin:toy",
                            "pretrained_vae_model_name_or_path": "madebyollin/sdxl-vae-fp16-fix",
                            "validation_data_dir": str(home / "datasets" / "held-out"),
                            "resume_from_checkpoint": "latest"}), home)
    assert cfg.train_data_dir == str(home / "datasets" / "mine")
    assert cfg.validation_data_dir == str(home / "datasets" / "held-out")
    assert cfg.output_dir == str(home / "runs")  # the default "runs" is the home's
    assert cfg.pretrained_model_name_or_path == "builtin:toy" and cfg.resume_from_checkpoint == "latest"
    assert cfg.pretrained_vae_model_name_or_path == "madebyollin/sdxl-vae-fp16-fix"  # a hub id stays one
    # a folder of the home by a hub id's shape is that folder; a folder of the project outside the home is refused
    assert confine(validate({"dataset_name": "datasets/mine"}), home).dataset_name == str(home / "datasets/mine")
    with pytest.raises(ConfigError, match="^dataset_name = 'examples/datasets' names a folder outside"):
        confine(validate({"dataset_name": "examples/datasets"}), home)
    assert confine(validate({"train_data_dir": "d", "output_dir": "runs/team-a"}), home).output_dir == \
        str(home / "runs" / "team-a")
    with pytest.raises(ConfigError, match="^output_dir = 'runs/team-a/.x'"):
        confine(validate({"train_data_dir": "d", "output_dir": "runs/team-a/.x"}), home)
