"""The headless CLI as users run it: clear errors with exit code 2, and `./launch.sh train`."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT, make_images
from engine.events import read_events


def cli(*args, cwd=ROOT, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "engine.train", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_unknown_key_in_toml_fails_naming_it(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('train_data_dir = "x"\n[training]\nleraning_rate = 1e-4\n')
    p = cli(cfg)
    assert p.returncode == 2
    assert "leraning_rate" in p.stderr and "learning_rate" in p.stderr


def test_out_of_range_override_fails_naming_key_value_range():
    p = cli("--set", "train_data_dir=x", "--set", "rank=1000")
    assert p.returncode == 2 and "rank = 1000" in p.stderr and "from 4 to 128" in p.stderr


def test_help_config_lists_every_key():
    from engine.config import FIELDS
    p = cli("--help-config")
    assert p.returncode == 0 and all(f.name in p.stdout for f in FIELDS)


@pytest.mark.parametrize("override,needle", [
    ("train_data_dir={tmp}/missing", "{tmp}/missing"),
    ("pretrained_model_name_or_path=builtin:tiny-sdx", "builtin:tiny-sd, builtin:tiny-sdxl"),
    ("pretrained_model_name_or_path={tmp}/model.ckpt", "pickle"),
    ("pretrained_model_name_or_path=nobody/no-such-model", "Hugging Face Hub"),
    ("pretrained_model_name_or_path={tmp}/nothing-here", "not found"),
    # a pickle renamed .safetensors, wherever a .safetensors file is read from the user
    ("pretrained_model_name_or_path={tmp}/renamed.safetensors", "{tmp}/renamed.safetensors is a PyTorch pickle"),
    ("pretrained_vae_model_name_or_path={tmp}/renamed.safetensors", "{tmp}/renamed.safetensors is a PyTorch pickle"),
    ("resume_from_checkpoint={tmp}/ckpt", "{tmp}/ckpt/trained_state.safetensors is a PyTorch pickle"),
])
def test_bad_inputs_exit_2_with_a_message_and_an_error_event(tmp_path, override, needle):
    import torch
    data = make_images(tmp_path / "data", n=1)
    (tmp_path / "model.ckpt").write_bytes(b"not really a pickle")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "renamed.safetensors")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "progress.json").write_text('{"step": 1, "epoch": 0}')
    torch.save({"unet::w": torch.zeros(2)}, tmp_path / "ckpt" / "trained_state.safetensors")
    out = tmp_path / "runs"
    args = ["--set", f"train_data_dir={data}", "--set", f"output_dir={out}", "--set", "adaptor_name=bad",
            "--set", "resolution=64", "--set", override.format(tmp=tmp_path)]
    p = cli(*args)  # conftest sets HF_HUB_OFFLINE=1: the hub id fails at once, as it would offline
    assert p.returncode == 2, p.stderr[-2000:]
    assert needle.format(tmp=tmp_path) in p.stderr
    assert "Traceback" not in p.stderr
    events = read_events(out / "bad" / "events.jsonl")
    assert events and events[-1]["type"] == "error" and needle.format(tmp=tmp_path) in events[-1]["message"]
    assert not (out / "bad" / "bad.safetensors").exists()


def test_pickle_base_with_allow_pickle_names_what_refused_it(tmp_path):
    # a checkpoint as trainers save them: tensors plus a numpy step counter, which torch.load(weights_only=True)
    # (how diffusers reads every pickle) refuses; the network is not what is wrong
    import numpy as np
    import torch
    torch.save({"state_dict": {"w": torch.zeros(2)}, "global_step": np.int64(5)}, tmp_path / "trained.ckpt")
    data = make_images(tmp_path / "data", n=1)
    p = cli("--set", f"train_data_dir={data}", "--set", f"output_dir={tmp_path / 'runs'}", "--set", "resolution=64",
            "--set", f"pretrained_model_name_or_path={tmp_path / 'trained.ckpt'}", "--set", "allow_pickle=true",
            "--set", "model_family=sd1")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "trained.ckpt" in p.stderr and "weights_only" in p.stderr and "numpy" in p.stderr
    assert "Hub" not in p.stderr and "network" not in p.stderr


def test_output_dir_that_is_a_file_is_named(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    p = cli("--set", f"train_data_dir={tmp_path}", "--set", f"output_dir={tmp_path / 'runs'}")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert f"{tmp_path / 'runs'} is a file, not a folder" in p.stderr and "output_dir" in p.stderr
    assert (tmp_path / "runs").read_text() == "not a folder"


def test_config_path_that_is_a_folder_and_a_key_given_twice_are_named(tmp_path):
    p = cli(tmp_path)
    assert p.returncode == 2 and f"config file {tmp_path} is a folder" in p.stderr, p.stderr
    cfg = tmp_path / "twice.toml"
    cfg.write_text('train_data_dir = "x"\n[training]\nlearning_rate = 1e-4\nrank = 8\nlearning_rate = 2e-4\n')
    p = cli(cfg)
    assert p.returncode == 2 and "learning_rate is set twice (again at line 5)" in p.stderr, p.stderr


def test_existing_adaptor_is_not_overwritten_by_accident(tmp_path):
    run = tmp_path / "runs" / "mine"
    run.mkdir(parents=True)
    (run / "mine.safetensors").write_bytes(b"precious")
    p = cli("--set", f"train_data_dir={tmp_path}", "--set", f"output_dir={tmp_path / 'runs'}",
            "--set", "adaptor_name=mine")
    assert p.returncode == 2 and "already exists" in p.stderr and "overwrite" in p.stderr
    assert (run / "mine.safetensors").read_bytes() == b"precious"


def test_checkpoints_of_an_unfinished_run_are_not_mixed_with_a_fresh_one(tmp_path):
    ckpt = tmp_path / "runs" / "crashed" / "checkpoints" / "checkpoint-500"
    ckpt.mkdir(parents=True)
    (ckpt / "progress.json").write_text('{"step": 500, "epoch": 3}')
    p = cli("--set", f"train_data_dir={tmp_path}", "--set", f"output_dir={tmp_path / 'runs'}",
            "--set", "adaptor_name=crashed")
    assert p.returncode == 2 and "checkpoints already exists" in p.stderr and "latest" in p.stderr
    assert (ckpt / "progress.json").is_file()


@pytest.mark.slow
def test_launch_sh_train_with_cached_latents_v_prediction_and_min_snr(tmp_path):
    # images no other test makes: the latent cache is shared by the session, and the count below is of new ones
    data = make_images(tmp_path / "data", n=3, seed=4242)
    cfg = tmp_path / "my.toml"
    cfg.write_text(f"""
[model]
pretrained_model_name_or_path = "builtin:tiny-sd"
[dataset]
train_data_dir = "{data}"
resolution = 64
cache_latents = true
center_crop = true
random_flip = true
[training]
max_train_steps = 3
prediction_type = "v_prediction"
snr_gamma = 5.0
noise_offset = 0.05
lr_scheduler = "cosine"
lr_warmup_steps = 1
seed = 3
[output]
output_dir = "{tmp_path / 'runs'}"
adaptor_name = "cached"
""")
    env = {**os.environ}
    first = subprocess.run(["./launch.sh", "train", str(cfg)], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "latent cache: 6 latents encoded" in first.stdout  # 3 images x 2 flips
    assert "step 3/3" in first.stdout and "ETA" in first.stdout
    run = tmp_path / "runs" / "cached"
    assert list((run / "logs").rglob("events.out.tfevents*")), "no TensorBoard scalars"
    from safetensors import safe_open
    with safe_open(str(run / "cached.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["modelspec.prediction_type"] == "v_prediction" and meta["ss_v_parameterization"] == "True"

    second = subprocess.run(["./launch.sh", "train", str(cfg), "--set", "adaptor_name=cached2"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "latent cache: 0 latents encoded" in second.stdout  # reused across runs
    lrs = [e["lr"] for e in read_events(tmp_path / "runs" / "cached2" / "events.jsonl") if e["type"] == "step"]
    assert lrs[0] > lrs[-1]  # cosine decays


def test_wandb_without_wandb_is_a_clear_error(tmp_path):
    import importlib.util
    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    data = make_images(tmp_path / "data", n=1)
    p = cli("--set", f"train_data_dir={data}", "--set", f"output_dir={tmp_path}", "--set", "report_to=wandb")
    assert p.returncode == 2 and "wandb is not installed" in p.stderr
