"""Presets: shipped ones validate, user ones save and load byte for byte, names stay in their folder, and the
diffusers-command and kohya-TOML importers map what users paste."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import presets
from engine.config import FIELD_BY_NAME, FIELDS, GROUPS, ConfigError, validate
from engine.paths import user_presets_dir

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["toy-dit-lora", "toy-dreambooth", "toy-full", "toy-lora", "toy-style-lora", "toy-textual-inversion", "flux1-dev-lora",
           "flux1-dev-lora-12gb", "qwenimage-lora", "sd15-lora", "sd15-transformerlab", "sd35-large-lora",
           "sd35-medium-lora", "sdxl-dreambooth-lora", "sdxl-lora", "zimage-lora"]


@pytest.fixture(autouse=True)
def studio_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("ADAPTOR_STUDIO_HOME", str(home))
    return home


def _files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ----------------------------------------------------------------------------- shipped presets

def test_shipped_presets_are_listed_toy_first_and_validate():
    listed = presets.list_presets()
    assert [p.name for p in listed] == SHIPPED
    for p in listed:
        assert not p.user and p.path == ROOT / "presets" / f"{p.name}.toml"
        raw = presets.read_preset(p.path)
        assert set(raw) <= set(FIELD_BY_NAME), p.name  # every key is a schema name
        cfg = presets.preset_values(p.path)
        assert all(getattr(cfg, k) == validate(raw).to_dict()[k] for k in raw)
        assert p.path.read_text().startswith("# "), f"{p.name} needs a header comment saying what it is for"


def test_shipped_presets_hold_what_they_promise():
    sdxl = presets.preset_values(presets.find_preset("sdxl-lora").path)
    assert (sdxl.pretrained_model_name_or_path, sdxl.pretrained_vae_model_name_or_path) == (
        "stabilityai/stable-diffusion-xl-base-1.0", "madebyollin/sdxl-vae-fp16-fix")
    assert (sdxl.resolution, sdxl.center_crop, sdxl.random_flip, sdxl.train_text_encoder) == (1024, True, True, True)
    assert (sdxl.train_batch_size, sdxl.gradient_accumulation_steps, sdxl.learning_rate) == (1, 4, 1e-4)
    assert (sdxl.lr_warmup_steps, sdxl.num_train_epochs, sdxl.checkpointing_steps) == (0, 10, 500)
    assert (sdxl.mixed_precision, sdxl.num_validation_images, sdxl.validation_epochs) == ("fp16", 4, 1)
    sd15 = presets.preset_values(presets.find_preset("sd15-lora").path)
    assert (sd15.pretrained_model_name_or_path, sd15.resolution, sd15.learning_rate) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5", 512, 1e-4)
    tl = presets.preset_values(presets.find_preset("sd15-transformerlab").path)
    assert (tl.rank, tl.lora_alpha, tl.learning_rate, tl.resolution, tl.lr_warmup_steps) == (8, 16.0, 1e-4, 512, 50)
    assert tl.image_interpolation_mode == "lanczos" and tl.snr_gamma is None


def test_flux_12gb_preset_holds_the_memory_settings():
    p = presets.find_preset("flux1-dev-lora-12gb").path
    cfg = presets.preset_values(p)
    assert (cfg.quantize_base, cfg.blocks_to_swap, cfg.optimizer) == ("nf4", 32, "adamw8bit")
    assert cfg.gradient_checkpointing and cfg.cache_text_encoder_outputs and cfg.mixed_precision == "bf16"
    assert "12 GB GPU" in p.read_text().splitlines()[0]


@pytest.mark.parametrize("name", ["toy-lora", "toy-style-lora"])
def test_engine_train_check_accepts_toy_presets(name, studio_home):
    saved = presets.save_user_preset(f"{name}-copy", presets.preset_values(ROOT / "presets" / f"{name}.toml"))
    for config in (f"presets/{name}.toml", str(saved)):  # the shipped file and a studio-saved copy
        proc = subprocess.run([sys.executable, "-m", "engine.train", config, "--check"], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert 'pretrained_model_name_or_path = "builtin:toy"' in proc.stdout


def test_find_preset_names_the_missing_one_and_lists_the_others():
    with pytest.raises(ConfigError) as e:
        presets.find_preset("toy-lorra")
    assert "toy-lorra" in str(e.value) and "toy-lora, toy-style-lora" in str(e.value)


def test_read_preset_errors_name_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[training]\nlearnin_rate = 1e-4\n')
    with pytest.raises(ConfigError) as e:
        presets.read_preset(bad)
    assert str(bad) in str(e.value) and "learnin_rate" in str(e.value) and "learning_rate" in str(e.value)
    bad.write_text('[training]\nlearning_rate = "fast"\ntrain_data_dir = "x"\n')
    assert presets.read_preset(bad) == {"learning_rate": "fast", "train_data_dir": "x"}  # no defaults filled in
    with pytest.raises(ConfigError) as e:
        presets.preset_values(bad)
    assert str(bad) in str(e.value) and "learning_rate = 'fast'" in str(e.value)


# ----------------------------------------------------------------------------- user presets

def _form_like(cfg) -> dict:
    """What a form hands back: numbers as floats, lists as text, empty boxes for unset text fields."""
    out = {}
    for f in FIELDS:
        v = getattr(cfg, f.name)
        if f.type is int and v is not None:
            v = float(v)
        elif f.type is list:
            v = ", ".join(v)
        elif v is None and f.type is str:
            v = ""
        out[f.name] = v
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_user_preset_round_trip_is_byte_exact(name, studio_home):
    cfg = presets.preset_values(presets.find_preset(name).path)
    path = presets.save_user_preset(f"my {name}", cfg)
    assert path == user_presets_dir() / f"my {name}.toml" and path.parent == studio_home / "presets" / "user"
    written = path.read_bytes()
    loaded = presets.preset_values(path)
    assert loaded == cfg
    # every field is written (unset optional ones left out): the file alone says everything
    assert set(presets.read_preset(path)) == {k for k, v in cfg.to_dict().items() if v is not None}
    assert presets.preset_bytes(loaded) == written
    assert presets.preset_bytes(_form_like(loaded)) == written
    assert presets.save_user_preset(f"user/my {name}", loaded).read_bytes() == written
    assert presets.find_preset(f"user/my {name}") == presets.Preset(f"user/my {name}", path, True)


def test_preset_bytes_keeps_relative_paths_and_schema_order():
    cfg = presets.preset_values(ROOT / "presets" / "toy-lora.toml")
    text = presets.preset_bytes(cfg).decode()
    assert 'train_data_dir = "examples/datasets/toy-star"' in text
    tables = [line for line in text.splitlines() if line.startswith("[")]
    # every table that holds a value, in the schema's order
    assert tables == [f"[{g}]" for g in GROUPS if any(getattr(cfg, f.name) is not None for f in FIELDS if f.group == g)]
    assert cfg.text_encoder_lr is None and "text_encoder_lr" not in text  # unset: TOML has no null
    for key in ("num_processes", "gpu_ids", "num_machines"):  # a preset never holds a machine's GPU count
        assert key not in text


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".", "", " x", "/tmp/x", "..\\x", "a\\b", ".hidden", "a:b",
                                 "x\n", "user/../x"])
def test_user_preset_names_cannot_escape(bad, studio_home, tmp_path):
    cfg = presets.preset_values(ROOT / "presets" / "toy-lora.toml")
    before = _files_under(tmp_path)
    with pytest.raises(ConfigError):
        presets.save_user_preset(bad, cfg)
    with pytest.raises(ConfigError):
        presets.delete_user_preset(bad)
    assert _files_under(tmp_path) == before


def test_shipped_presets_cannot_be_shadowed_or_deleted(studio_home):
    cfg = presets.preset_values(ROOT / "presets" / "toy-lora.toml")
    with pytest.raises(ConfigError, match="shipped preset"):
        presets.save_user_preset("toy-lora", cfg)
    with pytest.raises(ConfigError, match="shipped preset and cannot be deleted"):
        presets.delete_user_preset("toy-lora")
    assert (ROOT / "presets" / "toy-lora.toml").is_file()
    path = presets.save_user_preset("mine", cfg)
    with pytest.raises(ConfigError, match="exists already"):
        presets.save_user_preset("mine", cfg, overwrite=False)
    assert presets.delete_user_preset("user/mine") == path and not path.exists()
    with pytest.raises(ConfigError, match="no user preset named 'user/mine'"):
        presets.delete_user_preset("mine")


def test_a_bad_value_is_named_and_nothing_is_written(studio_home):
    values = presets.read_preset(ROOT / "presets" / "toy-lora.toml")
    with pytest.raises(ConfigError) as e:
        presets.save_user_preset("broken", {**values, "resolution": 100})
    assert "resolution = 100" in str(e.value) and "multiple of 8" in str(e.value)
    assert _files_under(studio_home) == []


# ----------------------------------------------------------------------------- diffusers command import

SDXL_COMMAND = r'''export MODEL_NAME="stabilityai/stable-diffusion-xl-base-1.0"
accelerate launch --multi_gpu --num_processes=2 --mixed_precision="bf16" train_text_to_image_lora_sdxl.py \
  --pretrained_model_name_or_path=$MODEL_NAME \
  --pretrained_vae_model_name_or_path=madebyollin/sdxl-vae-fp16-fix \
  --dataset_name=AdamLucek/oldbookillustrations-small \
  --resolution=1024 --center_crop --random_flip \
  --train_text_encoder \
  --train_batch_size=1 \
  --gradient_accumulation_steps 4 \
  --num_train_epochs=10 --checkpointing_steps=500 \
  --learning_rate=1e-04 --lr_warmup_steps=0 \
  --mixed_precision="fp16" \
  --seed=42 \
  --output_dir="runs/sdxl-book-lora" \
  --validation_prompt="An inventor tinkers with a complex machine, oblivious to the setting sun" \
  --report_to="wandb" --push_to_hub --hub_model_id "me/sdxl-book"
'''


def test_import_sdxl_command():
    r = presets.import_diffusers_command(SDXL_COMMAND)
    assert r.values == {
        "pretrained_model_name_or_path": "stabilityai/stable-diffusion-xl-base-1.0",
        "pretrained_vae_model_name_or_path": "madebyollin/sdxl-vae-fp16-fix",
        "dataset_name": "AdamLucek/oldbookillustrations-small",
        "resolution": 1024, "center_crop": True, "random_flip": True, "train_text_encoder": True,
        "train_batch_size": 1, "gradient_accumulation_steps": 4, "num_train_epochs": 10,
        "checkpointing_steps": 500, "learning_rate": 1e-4, "lr_warmup_steps": 0,
        "mixed_precision": "fp16",  # the script's flag wins over accelerate's --mixed_precision, as in the script
        "seed": 42, "output_dir": "runs", "adaptor_name": "sdxl-book-lora",
        "validation_prompt": "An inventor tinkers with a complex machine, oblivious to the setting sun",
        "report_to": "wandb", "model_family": "sdxl",
        "rank": 4, "lora_alpha": 4.0,  # the script's defaults, where ours differ
    }
    assert r.unmapped == ["--push_to_hub", "--hub_model_id=me/sdxl-book", "accelerate --multi_gpu",
                          "accelerate --num_processes=2"]
    assert any("output_dir" in n and "adaptor_name = 'sdxl-book-lora'" in n for n in r.notes)
    assert any("--num_processes=2" in n and "when a run starts" in n for n in r.notes)
    assert validate(r.values).train_text_encoder is True
    assert presets.import_pasted(SDXL_COMMAND) == r


def test_import_python_form_with_spaced_values_and_zero():
    r = presets.import_diffusers_command(
        "CUDA_VISIBLE_DEVICES=0 python -u train_text_to_image_lora.py --train_data_dir 'my images' "
        "--resolution 768 --rank 16 --seed 0 --noise_offset 0 --use_8bit_adam "
        "--enable_xformers_memory_efficient_attention --lr_scheduler cosine --dataloader_num_workers=4")
    assert r.values["train_data_dir"] == "my images"
    assert (r.values["resolution"], r.values["rank"], r.values["lora_alpha"]) == (768, 16, 16.0)
    assert r.values["seed"] == 0 and r.values["noise_offset"] == 0.0  # zeros are values
    assert r.values["optimizer"] == "adamw8bit" and r.values["lr_scheduler"] == "cosine"
    assert r.values["train_batch_size"] == 16  # the script's default
    assert "model_family" not in r.values and r.unmapped == []
    assert any("SDPA" in n for n in r.notes)
    validate(r.values)


def test_import_full_finetune_and_dreambooth_scripts_say_so():
    full = presets.import_diffusers_command("accelerate launch train_text_to_image.py --dataset_name=d")
    assert full.values["method"] == "full"
    db = presets.import_diffusers_command(
        "accelerate launch train_dreambooth_lora_sdxl.py --instance_data_dir=dog --instance_prompt='a sks dog' "
        "--train_data_dir=dog")
    assert "--instance_prompt=a sks dog" in db.unmapped
    assert any("DreamBooth" in n for n in db.notes) and db.values["model_family"] == "sdxl"


@pytest.mark.parametrize("flag, value", [("--resolution", "1001"), ("--learning_rate", "fast"),
                                         ("--lr_scheduler", "piecewise"), ("--seed", "-1")])
def test_import_bad_value_names_the_flag(flag, value):
    with pytest.raises(ConfigError) as e:
        presets.import_diffusers_command(f"accelerate launch train_text_to_image_lora.py --dataset_name=d "
                                         f"{flag}={value}")
    assert f"{flag}={value}" in str(e.value)


def test_import_without_a_script_is_refused():
    with pytest.raises(ConfigError, match="no training"):
        presets.import_diffusers_command("accelerate config")


# ----------------------------------------------------------------------------- kohya TOML import

KOHYA = '''
[model_arguments]
pretrained_model_name_or_path = "stabilityai/stable-diffusion-xl-base-1.0"
[additional_network_arguments]
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
network_train_unet_only = true
unet_lr = 1e-4
[optimizer_arguments]
optimizer_type = "Prodigy"
lr_scheduler = "cosine"
lr_warmup_steps = 0
[dataset_arguments]
train_data_dir = "{data}"
resolution = "1024,1024"
enable_bucket = true
max_bucket_reso = 2048
cache_latents_to_disk = true
cache_text_encoder_outputs = true
keep_tokens = 0
[training_arguments]
output_dir = "out"
output_name = "dog"
save_every_n_steps = 200
max_train_epochs = 10
mixed_precision = "bf16"
noise_offset = 0
min_snr_gamma = 5
sdpa = true
color_aug = false
shuffle_caption = false
'''


def test_import_kohya_maps_keys_and_keeps_zeros(tmp_path):
    data = tmp_path / "img"
    (data / "10_sks dog").mkdir(parents=True)
    r = presets.import_kohya_toml(KOHYA.format(data=data))
    v = r.values
    assert (v["rank"], v["lora_alpha"], v["adaptor_name"], v["output_dir"]) == (32, 16.0, "dog", "out")
    assert (v["save_every_n_steps"], v["num_train_epochs"], v["optimizer"], v["learning_rate"]) == (
        200, 10, "prodigy", 1e-4)
    assert v["train_text_encoder"] is False and v["cache_text_encoder_outputs"] is True and v["cache_latents"]
    assert (v["resolution"], v["enable_bucket"], v["max_bucket_reso"], v["snr_gamma"]) == (1024, True, 2048, 5.0)
    assert v["lr_warmup_steps"] == 0 and v["noise_offset"] == 0.0  # zeros kept (ours default to 50 and 0.0)
    assert v["train_data_dir"] == str(data) and v["center_crop"] is True  # kohya crops at the centre by default
    assert "max_train_steps" not in v
    assert v["keep_tokens"] == 0 and v["shuffle_caption"] is False  # both fields exist here (issue #16)
    assert r.unmapped == []  # color_aug = false asks for nothing
    assert any("10_sks dog" in n for n in r.notes) and any("SDPA" in n for n in r.notes)
    validate(v)
    assert presets.import_pasted(KOHYA.format(data=data)) == r


def test_import_kohya_defaults_and_foreign_options():
    r = presets.import_kohya_toml('network_module = "lycoris.kohya"\nnetwork_args = ["algo=loha", "conv_dim=4", '
                                  '"conv_alpha=1", "preset=full"]\noptimizer_type = "Lion"\n'
                                  'min_snr_gamma = 0\nresolution = "768,1024"\ntrain_data_dir = "nowhere"\n')
    v = r.values
    # kohya's own defaults where ours differ: alpha 1, rank 4, 1600 steps, lr 2e-6, text encoder trained
    assert (v["lora_alpha"], v["rank"], v["max_train_steps"], v["learning_rate"]) == (1.0, 4, 1600, 2e-6)
    assert v["train_text_encoder"] is True and v["resolution"] == 888  # about the same area, a multiple of 8
    assert "snr_gamma" not in v  # 0 turns Min-SNR off in kohya
    assert (v["lora_type"], v["conv_rank"], v["conv_alpha"], v["optimizer"]) == ("loha", 4, 1.0, "lion")
    assert r.unmapped == ["network_args preset=full"]
    assert any("no such folder" in n for n in r.notes)
    validate(v)


def test_import_kohya_bad_value_names_the_key():
    with pytest.raises(ConfigError, match="network_dim = 'big'"):
        presets.import_kohya_toml('network_dim = "big"')
    with pytest.raises(ConfigError, match="not valid TOML"):
        presets.import_kohya_toml("network_dim = ")


def test_import_kohya_sample_prompts_file(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# kohya sample prompts\na sks dog on a beach --n blurry --s 28 --l 6.5 --d 7\nsecond one\n"
                       "third --cn canny --w 512\n")
    r = presets.import_kohya_toml(f'train_data_dir = "x"\nsample_prompts = "{prompts}"\nsample_every_n_epochs = 2\n'
                                  'sample_sampler = "k_euler_a"\nsample_every_n_steps = 50\nclip_skip = 2\n')
    v = r.values
    # every prompt, with the options this syntax shares; a line with an option it lacks keeps its prompt
    assert v["validation_prompt"] == "a sks dog on a beach --n blurry --s 28 --l 6.5 --d 7\nsecond one\nthird"
    assert any("unknown option --cn" in n for n in r.notes)
    assert (v["validation_epochs"], v["sample_every_n_steps"], v["clip_skip"]) == (2, 50, 2)
    assert validate(v).sample_sampler == "euler_a" and r.unmapped == []


def test_empty_optional_text_saves_as_unset(studio_home):
    values = {**presets.read_preset(ROOT / "presets" / "toy-lora.toml"), "validation_prompt": ""}
    path = presets.save_user_preset("no-samples", values)
    assert "validation_prompt" not in presets.read_preset(path)
    assert presets.preset_bytes(presets.preset_values(path)) == path.read_bytes()
