"""Which family a model is, read from its own files; and loading refusals that protect the user."""
import json

import pytest
import torch
from safetensors.torch import save_file

from engine.builtin import resolve_builtin
from engine.config import validate
from engine.families import FAMILIES, ModelError, detect_family, get_family, resolve_source


def test_builtins_are_detected():
    assert detect_family(resolve_source("builtin:tiny-sd")) == "sd1"
    assert detect_family(resolve_source("builtin:tiny-sdxl")) == "sdxl"


def test_sd2_is_told_apart_by_its_1024_wide_text_encoder(tmp_path):
    model = tmp_path / "sd2"
    (model / "text_encoder").mkdir(parents=True)
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (model / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": 1024}))
    assert detect_family(resolve_source(str(model))) == "sd2"
    assert FAMILIES["sd2"].kohya_te_prefixes == {"text_encoder": "lora_te"}


@pytest.mark.parametrize("key,family", [
    ("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", "sdxl"),
    ("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight", "sd2"),
    ("cond_stage_model.transformer.text_model.embeddings.position_ids", "sd1"),
    ("model.diffusion_model.transformer_blocks.0.img_mod.1.weight", "qwenimage"),  # ComfyUI's Qwen-Image file
    ("double_blocks.0.img_attn.qkv.weight", "flux1"),  # BFL's flux1-dev.safetensors
    ("model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "flux1"),  # a checkpoint with its prefix
    ("joint_blocks.0.x_block.attn.qkv.weight", "sd3"),  # SAI's sd3.5_large.safetensors
    ("model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight", "sd3"),
    (("cap_embedder.1.weight", "noise_refiner.0.attention.qkv.weight", "cap_pad_token"), "zimage"),  # Comfy-Org's
    (("cap_embedder.1.weight", "noise_refiner.0.attention.qkv.weight"), None),  # Lumina 2: no pad tokens
])
def test_single_file_family_from_its_keys(tmp_path, key, family):
    f = tmp_path / "model.safetensors"
    save_file({k: torch.zeros(1) for k in ((key,) if isinstance(key, str) else key)}, str(f))
    assert detect_family(resolve_source(str(f))) == family


def test_single_file_without_network_says_what_to_do(tmp_path):
    f = tmp_path / "model.safetensors"
    save_file({"cond_stage_model.transformer.text_model.embeddings.position_ids": torch.zeros(1)}, str(f))
    cfg = validate({"train_data_dir": "d", "pretrained_model_name_or_path": str(f)})
    family, source = get_family(cfg)
    assert family.name == "sd1" and source.kind == "single_file"
    with pytest.raises(ModelError, match="single-file checkpoint"):
        family.load(source, cfg, torch.float32)


def test_pickle_needs_explicit_permission(tmp_path):
    f = tmp_path / "m.ckpt"
    f.write_bytes(b"x")
    with pytest.raises(ModelError, match="allow_pickle"):
        resolve_source(str(f))
    assert resolve_source(str(f), allow_pickle=True).kind == "single_file"


def test_explicit_family_that_contradicts_the_model_is_refused():
    cfg = validate({"train_data_dir": "d", "pretrained_model_name_or_path": "builtin:tiny-sdxl",
                    "model_family": "sd1"})
    with pytest.raises(ModelError, match="Stable Diffusion XL"):
        get_family(cfg)


def test_folder_without_model_index_is_explained(tmp_path):
    with pytest.raises(ModelError, match="model_index.json"):
        resolve_source(str(tmp_path))


def test_sdxl_time_ids_follow_the_batch():
    fam = FAMILIES["sdxl"]
    batch = {"original_sizes": torch.tensor([[100, 80]]), "crop_top_lefts": torch.tensor([[3, 5]]),
             "target_sizes": torch.tensor([[64, 64]])}
    out = fam.added_cond(None, batch, torch.zeros(1, 32), "cpu", torch.float32)
    assert out["time_ids"].tolist() == [[100.0, 80.0, 3.0, 5.0, 64.0, 64.0]]
    assert resolve_builtin("builtin:tiny-sdxl").is_dir()


def test_vae_override_from_a_folder_a_pipeline_or_a_missing_path(tmp_path):
    from engine.families.base import load_vae
    tiny = resolve_builtin("builtin:tiny-sd")
    source = resolve_source("builtin:tiny-sdxl")
    for override in (tiny / "vae", tiny):  # a VAE folder (config.json), or a pipeline holding vae/
        cfg = validate({"train_data_dir": "d", "pretrained_vae_model_name_or_path": str(override)})
        vae = load_vae(cfg, source, torch.float32)
        assert vae.config.scaling_factor == 0.18215  # tiny-sd's VAE, not tiny-sdxl's own (0.13025)
    cfg = validate({"train_data_dir": "d", "pretrained_vae_model_name_or_path": str(tmp_path / "nope")})
    with pytest.raises(ModelError, match="not found"):
        load_vae(cfg, source, torch.float32)
