"""Training through real `accelerate launch` subprocesses on the built-in tiny models, and loading the
adaptors the way users do."""
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_images, run_training, sets
from engine.builtin import resolve_builtin
from engine.events import read_events
from lora_checks import image, kohya_keys_and_meta, load_base, with_lora, with_manual_peft

pytestmark = pytest.mark.slow

COMMON = dict(resolution=64, rank=4, lora_alpha=8, learning_rate=5e-3, lr_warmup_steps=0, seed=1,
              train_batch_size=2, report_to="none")


def test_sd_lora_both_formats_load_and_agree(tmp_path, tiny_data):
    out = tmp_path / "runs"
    run_training(sets(**COMMON, train_data_dir=tiny_data, output_dir=out, adaptor_name="sd", max_train_steps=6,
                      checkpointing_steps=3, validation_prompt="a red square", num_validation_images=1,
                      num_inference_steps=2, trigger_word="sks"))
    run = out / "sd"
    kohya, diff = run / "sd.safetensors", run / "diffusers" / "pytorch_lora_weights.safetensors"
    for p in (kohya, diff, run / "config.toml", run / "README.md", run / "events.jsonl", run / "train.log",
              run / "checkpoints" / "checkpoint-3" / "sd.safetensors",
              run / "checkpoints" / "checkpoint-3" / "diffusers" / "pytorch_lora_weights.safetensors"):
        assert p.is_file(), p
    # 4 images, batch 2: 2 steps an epoch, 3 epochs, one validation image each epoch
    assert sorted(p.name for p in (run / "samples").glob("*.png")) == [
        "epoch001-step000002-0.png", "epoch002-step000004-0.png", "epoch003-step000006-0.png"]

    events = read_events(run / "events.jsonl")
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "checkpoint" in kinds and "sample" in kinds
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6] and all(e["total_steps"] == 6 for e in steps)
    assert all(np.isfinite(e["loss"]) and e["it_per_s"] > 0 and "eta_s" in e for e in steps)

    keys, meta, alphas = kohya_keys_and_meta(kohya)
    assert keys and all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    assert any(k.endswith(".lora_down.weight") for k in keys) and any(k.endswith(".lora_up.weight") for k in keys)
    assert alphas and all(a.dtype == torch.float32 and a.item() == 8.0 for a in alphas.values())
    assert meta["ss_network_dim"] == "4" and float(meta["ss_network_alpha"]) == 8.0
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_output_name"] == "sd"
    assert meta["ss_steps"] == "6" and meta["ss_num_train_images"] == "4" and meta["ss_seed"] == "1"
    assert meta["modelspec.trigger_phrase"] == "sks" and meta["modelspec.architecture"].endswith("/lora")
    assert '"a red square"' in meta["ss_tag_frequency"] or "a red square" in meta["ss_tag_frequency"]

    base = image(load_base("builtin:tiny-sd", "sd1"))
    from_diffusers = with_lora("builtin:tiny-sd", "sd1", run / "diffusers")
    from_kohya = with_lora("builtin:tiny-sd", "sd1", kohya)
    as_trained = with_manual_peft("builtin:tiny-sd", "sd1", diff, rank=4, alpha=8)
    assert np.abs(from_diffusers - base).max() > 1e-2, "the adaptor does not change the image"
    assert np.abs(from_kohya - from_diffusers).max() < 1e-3
    assert np.abs(as_trained - from_diffusers).max() < 1e-3, "loaded scale differs from the training scale"


def test_sdxl_text_encoder_lora_writes_te1_te2_that_load(tmp_path, tiny_data):
    out = tmp_path / "runs"
    run_training(sets(**COMMON, train_data_dir=tiny_data, output_dir=out, adaptor_name="xl",
                      pretrained_model_name_or_path="builtin:tiny-sdxl", max_train_steps=3,
                      train_text_encoder=True, random_flip=True, validation_prompt="a blue square",
                      num_validation_images=1, num_inference_steps=2))
    run = out / "xl"
    assert len(list((run / "samples").glob("*.png"))) == 2  # 4 images, batch 2, 3 steps: 2 epochs
    keys, meta, _ = kohya_keys_and_meta(run / "xl.safetensors")
    # the names kohya, ComfyUI and AUTOMATIC1111 map, whatever transformers calls the modules
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_0_self_attn_q_proj.") for k in keys)
    assert all(k.startswith(("lora_unet_", "lora_te1_text_model_", "lora_te2_text_model_")) for k in keys)
    assert any(k.startswith("lora_unet_") for k in keys) and not any(k.startswith("lora_te_") for k in keys)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    diff = load_file(str(run / "diffusers" / "pytorch_lora_weights.safetensors"))
    assert any(k.startswith("text_encoder.text_model.encoder.") for k in diff)
    assert any(k.startswith("text_encoder_2.text_model.encoder.") for k in diff)

    base = image(load_base("builtin:tiny-sdxl", "sdxl"))
    from_diffusers = with_lora("builtin:tiny-sdxl", "sdxl", run / "diffusers")
    from_kohya = with_lora("builtin:tiny-sdxl", "sdxl", run / "xl.safetensors")
    as_trained = with_manual_peft("builtin:tiny-sdxl", "sdxl", run / "diffusers" / "pytorch_lora_weights.safetensors",
                                  rank=4, alpha=8)
    assert np.abs(from_diffusers - base).max() > 1e-2
    assert np.abs(from_kohya - from_diffusers).max() < 1e-3
    assert np.abs(as_trained - from_diffusers).max() < 1e-3


def test_two_processes_on_a_local_model_folder(tmp_path, tiny_data):
    local = tmp_path / "my-model"
    shutil.copytree(resolve_builtin("builtin:tiny-sd"), local)
    out = tmp_path / "runs"
    run_training(sets(**COMMON, train_data_dir=tiny_data, output_dir=out, adaptor_name="ddp",
                      pretrained_model_name_or_path=local, max_train_steps=3, checkpointing_steps=1,
                      checkpoints_total_limit=1), num_processes=2)
    ckpts = sorted(p.name for p in (out / "ddp" / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2"]  # checkpoint-1 pruned by the limit; no temp folders left
    assert (out / "ddp" / "checkpoints" / "checkpoint-2" / "ddp.safetensors").is_file()
    events = read_events(out / "ddp" / "events.jsonl")
    start = next(e for e in events if e["type"] == "start")
    assert start["num_processes"] == 2 and start["model"] == str(local)
    assert sum(e["type"] == "done" for e in events) == 1  # only the main process writes events
    from_diffusers = with_lora(str(local), "sd1", out / "ddp" / "diffusers")
    assert np.abs(from_diffusers - image(load_base(str(local), "sd1"))).max() > 1e-3


def test_resume_ends_at_the_same_step_with_the_same_optimizer_steps(tmp_path):
    data = make_images(tmp_path / "data", n=6)
    out = tmp_path / "runs"
    args = dict(COMMON, train_data_dir=data, output_dir=out, adaptor_name="r", max_train_steps=6,
                checkpointing_steps=2, train_batch_size=1, gradient_accumulation_steps=2)
    run_training(sets(**args))
    run = out / "r"
    full = read_events(run / "events.jsonl")[-1]
    assert full["type"] == "done" and full["step"] == 6 and full["optimizer_steps"] == 6
    weights_full = load_file(str(run / "diffusers" / "pytorch_lora_weights.safetensors"))

    ckpt = run / "checkpoints" / "checkpoint-2"
    run_training(sets(**args, resume_from_checkpoint=ckpt))
    events = read_events(run / "events.jsonl")
    start = [e for e in events if e["type"] == "start"][-1]
    done = events[-1]
    assert start["first_step"] == 2
    assert [e["step"] for e in events if e["type"] == "step"][-4:] == [3, 4, 5, 6]
    assert done["type"] == "done" and done["step"] == 6 and done["optimizer_steps"] == 6
    # same data order, RNG and optimizer state: the resumed run lands on the same weights
    weights_resumed = load_file(str(run / "diffusers" / "pytorch_lora_weights.safetensors"))
    assert weights_full.keys() == weights_resumed.keys()
    diff = max((weights_full[k] - weights_resumed[k]).abs().max().item() for k in weights_full)
    assert diff < 1e-5, diff


def test_bf16_prodigy_gradient_checkpointing_text_encoder_and_workers(tmp_path, tiny_data):
    out = tmp_path / "runs"
    run_training(sets(**{**COMMON, "learning_rate": 1.0}, train_data_dir=tiny_data, output_dir=out,
                      adaptor_name="mix", max_train_steps=3, mixed_precision="bf16", optimizer="prodigy",
                      gradient_checkpointing=True, train_text_encoder=True, dataloader_num_workers=1))
    keys, meta, _ = kohya_keys_and_meta(out / "mix" / "mix.safetensors")
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in keys)
    assert meta["ss_mixed_precision"] == "bf16"
    assert meta["ss_optimizer"] == "prodigy"
    weights = load_file(str(out / "mix" / "diffusers" / "pytorch_lora_weights.safetensors"))
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())
    # LoRA up-weights start at zero; prodigy's first steps are tiny (its d starts at 1e-6) but real
    assert max(v.abs().max().item() for k, v in weights.items() if "lora_B" in k) > 0
    from_diffusers = with_lora("builtin:tiny-sd", "sd1", out / "mix" / "diffusers")
    assert np.isfinite(from_diffusers).all()
    assert np.abs(from_diffusers - image(load_base("builtin:tiny-sd", "sd1"))).max() > 1e-6


def test_sdxl_with_aspect_ratio_buckets(tmp_path):
    from PIL import Image
    data = tmp_path / "data"
    data.mkdir()
    for i, size in enumerate([(128, 64), (128, 64), (64, 128), (64, 128), (96, 96)]):
        Image.new("RGB", size, (40 * i, 100, 200)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text(f"shape {i}")
    out = tmp_path / "runs"
    run_training(sets(**{**COMMON, "resolution": 128}, train_data_dir=data, output_dir=out, adaptor_name="b",
                      pretrained_model_name_or_path="builtin:tiny-sdxl", enable_bucket=True, min_bucket_reso=64,
                      max_bucket_reso=256, max_train_steps=4))
    start = next(e for e in read_events(out / "b" / "events.jsonl") if e["type"] == "start")
    buckets = {tuple(b["resolution"]): b["count"] for b in start["buckets"]}
    assert buckets == {(64, 192): 2, (128, 128): 1, (192, 64): 2}  # wide, square and tall kept their shapes
    _, meta, _ = kohya_keys_and_meta(out / "b" / "b.safetensors")
    assert meta["ss_enable_bucket"] == "True" and "[192, 64]" in meta["ss_bucket_info"]
    assert np.abs(with_lora("builtin:tiny-sdxl", "sdxl", out / "b" / "diffusers")
                  - image(load_base("builtin:tiny-sdxl", "sdxl"))).max() > 1e-3
