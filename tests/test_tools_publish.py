"""engine/tools publish (issue #18): the card and the file set of a finished LoRA run, and the one-line errors
without a token or without the Hub. The upload itself is not tested here: no Hub can be reached from the test
machines, and a hand-made imitation of the Hub's commit API would test our guess of it, not the Hub."""
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, run_training, sets
from tools_loras import tools

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    from conftest import make_images
    tmp = tmp_path_factory.mktemp("pub")
    run_training(sets(pretrained_model_name_or_path="builtin:tiny-sd", resolution=64, seed=3, train_batch_size=2,
                      report_to="none", max_train_steps=2, train_data_dir=make_images(tmp / "data"),
                      output_dir=tmp / "runs", adaptor_name="pub", trigger_word="sks",
                      validation_prompt="a red square", num_validation_images=1, num_inference_steps=2), launch=False)
    (tmp / "runs" / "pub" / "checkpoints").mkdir(exist_ok=True)
    (tmp / "runs" / "pub" / "checkpoints" / "state.bin").write_bytes(b"not for the Hub")
    return tmp / "runs" / "pub"


def test_publish_writes_the_card_and_the_run_files(lora_run, tmp_path):
    out = tmp_path / "repo"
    tools("publish", lora_run, "--repo", "someone/pub-lora", "--out", out)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    sample = next((lora_run / "samples").glob("*.png")).name
    assert files == {"README.md", "config.toml", "pub.safetensors", "diffusers/pytorch_lora_weights.safetensors",
                     f"samples/{sample}"}  # no checkpoints, events or logs
    assert (out / "pub.safetensors").read_bytes() == (lora_run / "pub.safetensors").read_bytes()
    text = (out / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "creativeml-openrail-m" and meta["instance_prompt"] == "sks"
    assert "base_model" not in meta  # builtin:tiny-sd is no Hub id; the card says so in words
    assert "`builtin:tiny-sd` (not on the Hub" in body
    assert meta["widget"] == [{"text": "sks, a red square", "output": {"url": f"samples/{sample}"}}]
    assert "lora" in meta["tags"] and meta["library_name"] == "diffusers"
    assert "Rank 8, alpha 16" in body and f"![sample](samples/{sample})" in body
    assert 'load_lora_weights("someone/pub-lora", subfolder="diffusers")' in body
    assert str(lora_run) not in text  # no path of this machine
    # a chosen license, and an existing folder is refused
    tools("publish", lora_run, "--repo", "someone/pub-lora", "--out", tmp_path / "mit", "--license", "mit")
    assert yaml.safe_load((tmp_path / "mit" / "README.md").read_text().split("---\n")[1])["license"] == "mit"
    assert "already exists" in tools("publish", lora_run, "--repo", "a/b", "--out", out, expect_rc=2)[1]


def test_publish_without_a_token_or_the_hub_says_so(lora_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env |= {"HF_HOME": str(tmp_path / "hf-home"), "PYTHONPATH": str(ROOT)}  # no stored login either
    proc = subprocess.run([sys.executable, "-m", "engine.tools", "publish", str(lora_run), "--repo", "someone/x"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no Hugging Face token" in proc.stderr and "nothing was uploaded" in proc.stderr
    # with a token but HF_HUB_OFFLINE (as the tests run)
    _, err = tools("publish", lora_run, "--repo", "someone/x", "--token", "hf_test", expect_rc=2)
    assert "cannot be reached (HF_HUB_OFFLINE is set)" in err and "nothing was uploaded" in err
    assert "owner/name" in tools("publish", lora_run, "--repo", "no-owner", "--token", "t", expect_rc=2)[1]
    assert "no config.toml" in tools("publish", tmp_path, "--repo", "a/b", "--out", tmp_path / "o", expect_rc=2)[1]
