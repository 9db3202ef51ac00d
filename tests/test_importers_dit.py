"""The importers on the DiT families' settings: diffusers' train_dreambooth_lora_flux.py / _sd3.py commands (as
their READMEs give them) and an sd-scripts flux_train_network.py config (docs/flux_train_network.md's example as
a --config_file TOML) map onto the flow-matching fields, list what has no field, and load and train-check."""
import pytest

from engine.config import ConfigError, validate
from engine.families import FAMILIES
from engine.families.keys import sd3 as keys_sd3
from engine.importers import import_diffusers_command, import_kohya_toml
from engine.objective_flow import check_options
from engine.presets import import_pasted


def _loads(r, family: str, tmp_path):
    """The imported values, with a dataset chosen, validate and pass the flow objective's checks."""
    values = dict(r.values)
    if "dataset_name" not in values:
        values["train_data_dir"] = str(tmp_path)
    cfg = validate(values)
    check_options(cfg, FAMILIES[family])
    return cfg


# ----------------------------------------------------------------------------- diffusers: Flux.1

# examples/dreambooth/README_flux.md, "DreamBooth LoRA with text-encoder training", plus the flags a user adds
FLUX_COMMAND = r'''export MODEL_NAME="black-forest-labs/FLUX.1-dev"
export INSTANCE_DIR="dog"
export OUTPUT_DIR="trained-flux-dev-dreambooth-lora"

accelerate launch train_dreambooth_lora_flux.py \
  --pretrained_model_name_or_path=$MODEL_NAME  \
  --instance_data_dir=$INSTANCE_DIR \
  --output_dir=$OUTPUT_DIR \
  --mixed_precision="bf16" \
  --train_text_encoder\
  --instance_prompt="a photo of sks dog" \
  --resolution=512 \
  --train_batch_size=1 \
  --guidance_scale=1 \
  --gradient_accumulation_steps=4 \
  --optimizer="prodigy" \
  --learning_rate=1. \
  --report_to="wandb" \
  --lr_scheduler="constant" \
  --lr_warmup_steps=0 \
  --max_train_steps=500 \
  --validation_prompt="A photo of sks dog in a bucket" \
  --seed="0" \
  --push_to_hub \
  --rank=16 --lora_alpha=16 --lora_layers="attn.to_k,attn.to_q,attn.to_v,attn.to_out.0" \
  --weighting_scheme=logit_normal --logit_mean=0.5 --logit_std=1.2 --max_sequence_length=256 \
  --cache_latents --adam_weight_decay_text_encoder=1e-3
'''


def test_flux_command_maps_the_flow_fields(tmp_path):
    r = import_diffusers_command(FLUX_COMMAND)
    v = r.values
    assert v["model_family"] == "flux1"
    assert v["flux_guidance_value"] == 1.0 and "guidance_scale" not in v  # training guidance, not sampling
    assert (v["weighting_scheme"], v["logit_mean"], v["logit_std"], v["max_sequence_length"]) == (
        "logit_normal", 0.5, 1.2, 256)
    assert v["lora_target_modules"] == ["attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0"]
    assert (v["rank"], v["lora_alpha"], v["optimizer"], v["learning_rate"]) == (16, 16.0, "prodigy", 1.0)
    assert v["train_text_encoder"] is True and v["cache_latents"] is True
    assert "text_encoder_lr" not in v  # with prodigy the script trains the text encoder at learning_rate
    # the script draws the scheduler's unshifted sigmas (dev shifts by resolution only when sampling)
    assert (v["flow_shift"], v["flow_dynamic_shift"]) == (1.0, False)
    assert (v["adaptor_name"], v["seed"], v["checkpointing_steps"]) == ("trained-flux-dev-dreambooth-lora", 0, 500)
    assert r.unmapped == ["--instance_data_dir=dog", "--instance_prompt=a photo of sks dog", "--push_to_hub",
                          "--adam_weight_decay_text_encoder=1e-3"]
    cfg = _loads(r, "flux1", tmp_path)
    assert cfg.flux_guidance_value == 1.0 and cfg.rank == 16
    assert import_pasted(FLUX_COMMAND) == r


def test_flux_script_defaults_fill_what_the_command_leaves_out(tmp_path):
    r = import_diffusers_command("accelerate launch train_dreambooth_lora_flux.py --dataset_name=d "
                                 "--optimizer=AdamW --train_text_encoder --rank=8")
    v = r.values
    # the script's defaults where ours differ: guidance 3.5, alpha 4 (not = rank), TE lr 5e-6, batch 4, ...
    assert (v["flux_guidance_value"], v["lora_alpha"], v["text_encoder_lr"]) == (3.5, 4.0, 5e-6)
    assert (v["train_batch_size"], v["lr_warmup_steps"], v["validation_epochs"]) == (4, 500, 50)
    assert v["optimizer"] == "adamw"  # the scripts lower-case it
    assert "weighting_scheme" not in v  # "none" is Flux.1's default here too
    assert any("unshifted sigmas" in n for n in r.notes)
    _loads(r, "flux1", tmp_path)


# ----------------------------------------------------------------------------- diffusers: SD3

# examples/dreambooth/README_sd3.md, text-encoder training, with --lora_blocks / --lora_layers from the same page
SD3_COMMAND = r'''export MODEL_NAME="stabilityai/stable-diffusion-3-medium-diffusers"
export OUTPUT_DIR="trained-sd3-lora"

accelerate launch train_dreambooth_lora_sd3.py \
  --pretrained_model_name_or_path=$MODEL_NAME  \
  --output_dir=$OUTPUT_DIR \
  --dataset_name="Norod78/Yarn-art-style" \
  --instance_prompt="a photo of TOK yarn art dog" \
  --resolution=1024 \
  --train_batch_size=1 \
  --train_text_encoder\
  --gradient_accumulation_steps=1 \
  --optimizer="prodigy"\
  --learning_rate=1.0 \
  --text_encoder_lr=1.0 \
  --report_to="wandb" \
  --lr_scheduler="constant" \
  --lr_warmup_steps=0 \
  --max_train_steps=1500 \
  --rank=32 \
  --seed="0" \
  --push_to_hub \
  --lora_blocks "12,30" --lora_layers attn.to_k,attn.to_q,attn.to_v,attn.to_out.0 \
  --weighting_scheme=mode --mode_scale=1.5 --precondition_outputs=1 --max_sequence_length=256
'''


def test_sd3_command_maps_blocks_weighting_and_lists_preconditioning(tmp_path):
    r = import_diffusers_command(SD3_COMMAND)
    v = r.values
    assert v["model_family"] == "sd3" and v["dataset_name"] == "Norod78/Yarn-art-style"
    # --lora_blocks prefixes the layers with transformer_blocks.N., as the script does
    assert v["lora_target_modules"] == [f"transformer_blocks.{b}.attn.{m}" for b in (12, 30)
                                        for m in ("to_k", "to_q", "to_v", "to_out.0")]
    assert (v["weighting_scheme"], v["mode_scale"], v["max_sequence_length"]) == ("mode", 1.5, 256)
    assert (v["rank"], v["lora_alpha"], v["text_encoder_lr"]) == (32, 32.0, 1.0)  # sd3: alpha = rank
    assert v["train_text_encoder"] is True and "flux_guidance_value" not in v and "flow_shift" not in v
    assert r.unmapped == ["--instance_prompt=a photo of TOK yarn art dog", "--push_to_hub",
                          "--precondition_outputs=1"]
    assert any("--precondition_outputs=1" in n and "sigma^2" in n for n in r.notes)
    _loads(r, "sd3", tmp_path)


def test_sd3_defaults_and_precondition_off():
    r = import_diffusers_command("python train_dreambooth_lora_sd3.py --dataset_name=d --precondition_outputs=0")
    v = r.values
    assert (v["max_sequence_length"], v["rank"], v["lora_alpha"]) == (77, 4, 4.0)  # the script's defaults
    assert "lora_target_modules" not in v and "weighting_scheme" not in v  # the family's = the script's
    assert r.unmapped == [] and any("accepted" in n for n in r.notes)
    blocks = import_diffusers_command("python train_dreambooth_lora_sd3.py --dataset_name=d --lora_blocks=3")
    assert blocks.values["lora_target_modules"] == [f"transformer_blocks.3.{m}" for m in keys_sd3.DEFAULT_TARGETS]
    with pytest.raises(ConfigError, match="--lora_blocks=a,b"):
        import_diffusers_command("python train_dreambooth_lora_sd3.py --dataset_name=d --lora_blocks=a,b")


def test_sd_scripts_keep_guidance_scale_as_sampling_guidance():
    r = import_diffusers_command("accelerate launch train_text_to_image_lora.py --dataset_name=d --guidance_scale=5")
    assert r.values["guidance_scale"] == 5.0 and "flux_guidance_value" not in r.values


# ----------------------------------------------------------------------------- sd-scripts flux_train_network.py

# docs/flux_train_network.md's command as a --config_file TOML, with two memory options it documents
FLUX_TOML = '''
[model_arguments]
pretrained_model_name_or_path = "flux1-dev.safetensors"
clip_l = "clip_l.safetensors"
t5xxl = "t5xxl_fp16.safetensors"
ae = "ae.safetensors"
[additional_network_arguments]
network_module = "networks.lora_flux"
network_dim = 16
network_alpha = 1
[optimizer_arguments]
learning_rate = 1e-4
optimizer_type = "AdamW8bit"
lr_scheduler = "constant"
[dataset_arguments]
dataset_config = "my_flux_dataset_config.toml"
cache_latents = true
cache_text_encoder_outputs = true
[training_arguments]
output_dir = "out"
output_name = "my_flux_lora"
save_model_as = "safetensors"
sdpa = true
max_train_epochs = 10
save_every_n_epochs = 1
mixed_precision = "fp16"
gradient_checkpointing = true
guidance_scale = 1.0
timestep_sampling = "flux_shift"
model_prediction_type = "raw"
blocks_to_swap = 18
fp8_base = true
apply_t5_attn_mask = true
'''


def test_flux_train_network_toml(tmp_path):
    r = import_kohya_toml(FLUX_TOML)
    v = r.values
    assert v["model_family"] == "flux1" and v["flux_guidance_value"] == 1.0
    # flux_shift: sigmoid(N(0, 1)) shifted by resolution = logit_normal + the dynamic shift
    assert (v["weighting_scheme"], v["logit_mean"], v["logit_std"], v["flow_dynamic_shift"]) == (
        "logit_normal", 0.0, 1.0, True)
    assert (v["rank"], v["lora_alpha"], v["optimizer"], v["learning_rate"]) == (16, 1.0, "adamw8bit", 1e-4)
    assert v["cache_latents"] and v["cache_text_encoder_outputs"]
    assert (v["num_train_epochs"], v["save_every_n_epochs"], v["adaptor_name"]) == (10, 1, "my_flux_lora")
    assert "norm1.linear" in v["lora_target_modules"] and "proj_mlp" in v["lora_target_modules"]
    assert r.unmapped == ["dataset_config = 'my_flux_dataset_config.toml'", "clip_l = 'clip_l.safetensors'",
                          "t5xxl = 't5xxl_fp16.safetensors'", "ae = 'ae.safetensors'", "apply_t5_attn_mask = True"]
    # fp8_base: the frozen base in fp8; sd-scripts' 18 blocks (9 double + 18 single = 36 single-block sizes)
    assert (v["quantize_base"], v["blocks_to_swap"]) == ("fp8", 36)
    assert any("single-file Flux.1 checkpoint" in n for n in r.notes)
    assert (v["pretrained_transformer_model_name_or_path"], v["pretrained_model_name_or_path"]) == (
        "flux1-dev.safetensors", "black-forest-labs/FLUX.1-dev")
    assert _loads(r, "flux1", tmp_path).train_text_encoder is False  # kohya: not with cached outputs
    assert import_pasted(FLUX_TOML) == r


def test_flux_toml_shift_sigmoid_and_defaults(tmp_path):
    # docs' "Recommended Settings", a T5 length, and a UNet-only option flow matching refuses
    r = import_kohya_toml('network_module = "networks.lora_flux"\ntimestep_sampling = "shift"\n'
                          'discrete_flow_shift = 3.1582\nsigmoid_scale = 1.5\nmodel_prediction_type = "raw"\n'
                          'guidance_scale = 1.0\nt5xxl_max_token_length = 256\nnoise_offset = 0.05\n'
                          'logit_mean = 1.0\n')
    v = r.values
    assert (v["weighting_scheme"], v["logit_std"], v["flow_shift"], v["flow_dynamic_shift"]) == (
        "logit_normal", 1.5, 3.1582, False)
    assert v["max_sequence_length"] == 256 and v["logit_mean"] == 0.0  # sd-scripts ignores logit_mean here
    assert "noise_offset" not in v and r.unmapped == ["noise_offset = 0.05"]
    _loads(r, "flux1", tmp_path)

    bare = import_kohya_toml('network_module = "networks.lora_flux"\nweighting_scheme = "logit_normal"\n')
    b = bare.values
    # sd-scripts' defaults: sigma sampling (the scheduler's sigmas, shift 3.0), guidance 3.5, sigma_scaled
    assert (b["weighting_scheme"], b["flow_shift"], b["flow_dynamic_shift"], b["flux_guidance_value"]) == (
        "logit_normal", 3.0, False, 3.5)
    assert bare.unmapped == [] and any("sigma_scaled" in n and "default" in n for n in bare.notes)
    _loads(bare, "flux1", tmp_path)


@pytest.mark.parametrize("prediction", ["additive", "sigma_scaled"])
def test_flux_toml_lists_other_prediction_types(prediction):
    r = import_kohya_toml(f'timestep_sampling = "uniform"\nmodel_prediction_type = "{prediction}"\n')
    assert r.values["model_family"] == "flux1" and r.values["weighting_scheme"] == "none"
    assert (r.values["flow_shift"], r.values["flow_dynamic_shift"]) == (1.0, False)
    assert r.unmapped == [f"model_prediction_type = '{prediction}'"]


def test_flux_toml_targets_are_lora_fluxs_layers_bar_linear2():
    """The suffix list PEFT gets covers what sd-scripts' networks/lora_flux.py trains (keys_flux1's regex), less
    the single blocks' proj_out (linear2), on a real (tiny) FluxTransformer2DModel."""
    import re

    import torch
    from diffusers import FluxTransformer2DModel
    from peft import LoraConfig, inject_adapter_in_model

    from engine.families.keys import flux1 as keys_flux1

    model = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=32, axes_dims_rope=(4, 6, 6), guidance_embeds=True)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    sd_scripts = {n for n in linear if re.fullmatch(keys_flux1.SD_SCRIPTS_TARGETS, n)}
    targets = import_kohya_toml('network_module = "networks.lora_flux"\n').values["lora_target_modules"]
    inject_adapter_in_model(LoraConfig(r=4, target_modules=targets), model)
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_modules() if n.endswith(".lora_A")}
    assert adapted == sd_scripts - {"single_transformer_blocks.0.proj_out"}
