"""kohya sd-scripts config TOML -> schema values (see engine/importers.py for the contract)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from engine.config import FIELD_BY_NAME, ConfigError
from engine.sampling import prompts
from engine import importers_dit
from engine.importers import _SDPA, ImportResult, _Collector

# kohya keys with a field of the same name here
_KOHYA_SAME = ("pretrained_model_name_or_path", "caption_extension", "train_batch_size", "seed", "lr_scheduler",
               "gradient_accumulation_steps", "mixed_precision", "gradient_checkpointing", "noise_offset",
               "cache_latents", "cache_text_encoder_outputs", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
               "bucket_reso_steps", "bucket_no_upscale", "caption_dropout_rate", "max_grad_norm", "torch_compile",
               "max_train_steps", "lr_warmup_steps", "shuffle_caption", "keep_tokens")
_KOHYA_RENAMES = {
    **{k: k for k in _KOHYA_SAME}, "vae": "pretrained_vae_model_name_or_path", "caption_extention": "caption_extension",
    "network_dim": "rank", "network_alpha": "lora_alpha", "output_name": "adaptor_name",
    "lr_scheduler_num_cycles": "lr_num_cycles",
    "lr_scheduler_power": "lr_power", "cache_latents_to_disk": "cache_latents",
    "cache_text_encoder_outputs_to_disk": "cache_text_encoder_outputs", "flip_aug": "random_flip",
    "max_data_loader_n_workers": "dataloader_num_workers", "dataset_repeats": "repeats",
    "sample_every_n_epochs": "validation_epochs", "max_train_epochs": "num_train_epochs",
    # the same names here: intermediate adaptors, sampling, clip_skip and the validation loss
    **{k: k for k in ("save_every_n_steps", "save_every_n_epochs", "sample_every_n_steps", "sample_sampler",
                      "sample_at_first", "clip_skip", "validation_split", "validation_seed")},
    "validate_every_n_steps": "validation_loss_steps",
}
_KOHYA_SCHEDULERS = set(FIELD_BY_NAME["lr_scheduler"].choices)
_KOHYA_NOTES = {
    "xformers": _SDPA, "sdpa": _SDPA, "mem_eff_attn": _SDPA,
    "save_precision": "not needed: the adaptor is saved as the engine writes it (a kohya .safetensors file and "
                      "a diffusers folder)",
    "save_model_as": "not needed: the adaptor is always saved as .safetensors, in kohya and diffusers format",
    "no_half_vae": "not needed: the SDXL VAE runs in float32 (or bfloat16 where that is safe)",
    "reg_data_dir": "regularisation images (DreamBooth prior preservation) are not supported yet",
    "dataset_config": "a kohya dataset config is not read: set train_data_dir to the image folder",
    "network_weights": "starting from an existing LoRA is not supported yet",
    "network_train_text_encoder_only": "training only the text encoder is not supported",
    "resume": "kohya state folders cannot be resumed here; resume_from_checkpoint takes this studio's checkpoints",
}
# options that change nothing here: noted, not listed as unmapped
_KOHYA_ACCEPTED = {"xformers", "sdpa", "mem_eff_attn", "save_precision", "save_model_as", "no_half_vae"}


def _kohya_flat(text: str) -> dict[str, Any]:
    """kohya's read_config_from_file: keys at the top level or one table deep (a later table wins)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"the kohya config is not valid TOML: {e}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


def _kohya_resolution(c: _Collector, value) -> None:
    source = f"resolution = {value!r}"
    parts = [value] if isinstance(value, int) else [p for p in re.split(r"[,x\s]+", str(value)) if p]
    try:
        sides = [int(p) for p in parts]
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: write it as 1024 or \"1024,1024\"") from None
    if len(sides) == 2 and sides[0] != sides[1]:
        side = round((sides[0] * sides[1]) ** 0.5 / 8) * 8
        c.notes.append(f"{source}: training here is square; resolution = {side} covers the same area "
                       "(enable_bucket keeps each image's aspect ratio)")
        sides = [side]
    if len(sides) not in (1, 2):
        raise ConfigError(f"{source}: write it as 1024 or \"1024,1024\"")
    c.set("resolution", sides[0], source)


def _kohya_sample_prompts(c: _Collector, value) -> None:
    """A .txt prompt file: every prompt line, with its --n/--w/--h/--s/--d/--l/--ss options, becomes
    validation_prompt (the same syntax here); a line's other options are dropped, with a note."""
    source = f"sample_prompts = {value!r}"
    path = Path(str(value))
    if path.suffix.lower() != ".txt" or not path.is_file():
        c.unmapped.append(source)
        c.notes.append(f"{source}: not a .txt prompt file found here; set validation_prompt yourself")
        return
    lines = (ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines())
    kept = []
    for line in (ln for ln in lines if ln and not ln.startswith("#")):
        try:
            prompts.parse(line)
            kept.append(line)
        except ValueError as e:
            kept.append(re.split(r"\s--", " " + line)[0].strip())
            c.notes.append(f"{source}: {e}; that line is kept without its options")
    if not kept:
        c.notes.append(f"{source}: the file holds no prompt")
        return
    c.set("validation_prompt", "\n".join(kept), source)


def _kohya_data_dir(c: _Collector, value) -> None:
    source = f"train_data_dir = {value!r}"
    c.set("train_data_dir", value, source)
    folder = Path(str(value))
    if not folder.is_dir():
        c.notes.append(f"{source}: no such folder here; kohya folders hold '<repeats>_<name>' sub-folders, "
                       "which are read as they are (repeats included)")
        return
    concepts = sorted(p.name for p in folder.iterdir() if p.is_dir() and re.match(r"^\d+_.+", p.name))
    if concepts:
        c.notes.append(f"{source}: its kohya folders ({', '.join(concepts)}) are read as they are: each one's "
                       "repeats from its name, its name as the caption of images without one")


def import_kohya_toml(text: str) -> ImportResult:
    """A kohya sd-scripts config (train_network.py / sdxl_train_network.py / flux_train_network.py
    --config_file)."""
    flat = _kohya_flat(text)
    c = _Collector()
    flux = importers_dit.kohya_is_flux(flat)
    for key, value in flat.items():
        source = f"{key} = {value!r}"
        if flux and key in importers_dit.KOHYA_FLUX_KEYS:
            continue  # importers_dit.kohya_flux, below
        if key == "lr_scheduler" and value not in _KOHYA_SCHEDULERS:  # e.g. adafactor, cosine_with_min_lr
            c.unmapped.append(source)
            c.notes.append(f"{source}: schedules here are {', '.join(sorted(_KOHYA_SCHEDULERS))}; constant is used")
        elif key in _KOHYA_RENAMES:
            if key == "lr_warmup_steps" and isinstance(value, float) and 0 < value < 1:
                continue  # a ratio of the total steps: resolved below, once the steps are known
            c.set(_KOHYA_RENAMES[key], value, source)
        elif key == "output_dir":
            c.set("output_dir", value, source)
            c.notes.append(f"{source}: kohya writes output_dir/output_name.safetensors; here a run writes "
                           "output_dir/adaptor_name/ (the .safetensors file, a diffusers folder, samples, logs)")
        elif key == "resolution":
            _kohya_resolution(c, value)
        elif key == "train_data_dir":
            _kohya_data_dir(c, value)
        elif key == "sample_prompts":
            _kohya_sample_prompts(c, value)
        elif key in ("min_snr_gamma", "optimizer_type", "network_module", "learning_rate", "unet_lr",
                     "text_encoder_lr", "network_train_unet_only", "use_8bit_adam", "random_crop", "v2",
                     "v_parameterization", "caption_prefix", "log_with", "optimizer_args", "logging_dir",
                     "network_args"):
            continue  # read below, where they depend on each other
        elif value is not False and value is not None:  # `not in (False, None)` would drop 0 (0 == False)
            if key in _KOHYA_NOTES:
                c.notes.append(f"{source}: {_KOHYA_NOTES[key]}")
            if key not in _KOHYA_ACCEPTED:
                c.unmapped.append(source)
    _kohya_network(c, flat)
    _kohya_optimizer(c, flat)
    _kohya_misc(c, flat)
    if flux:
        importers_dit.kohya_flux(c, flat)
    _kohya_defaults(c, flat, flux)
    if flux and c.values.get("model_family") == "flux1":
        importers_dit.drop_unet_only(c, "flux1")
    return c.result("the kohya config")


# network_args of networks.lora and lycoris.kohya ("key=value" strings) -> schema keys
_NETWORK_ARGS = {"conv_dim": "conv_rank", "conv_rank": "conv_rank", "conv_alpha": "conv_alpha",
                 "dropout": "lora_dropout", "rank_dropout": "rank_dropout", "module_dropout": "module_dropout"}
_LYCORIS_ALGOS = {"lora": "lora", "locon": "lora", "loha": "loha", "lokr": "lokr"}


def _kohya_network(c: _Collector, flat: dict) -> None:
    module = flat.get("network_module")
    args = dict(str(a).split("=", 1) for a in flat.get("network_args") or [] if "=" in str(a))
    if module == "lycoris.kohya":
        algo = args.pop("algo", "lora").strip().lower()
        if algo in _LYCORIS_ALGOS:
            c.set("lora_type", _LYCORIS_ALGOS[algo], f"network_args algo={algo}")
        else:
            c.unmapped.append(f"network_args algo={algo}")
            c.notes.append(f"LyCORIS algo={algo}: lora, locon, loha and lokr are trained here")
        if str(args.pop("dora_wd", "false")).strip().lower() == "true":
            c.set("use_dora", True, "network_args dora_wd=True")
    elif module not in (None, "networks.lora", "networks.lora_flux"):
        c.unmapped.append(f"network_module = {module!r}")
        c.notes.append(f"network_module = {module!r}: networks.lora and lycoris.kohya (lora, locon, loha, lokr) "
                       "are trained here")
    for key, value in args.items():
        target = _NETWORK_ARGS.get(key.strip())
        if target:
            c.set(target, value.strip(), f"network_args {key}={value}")
        else:
            c.unmapped.append(f"network_args {key}={value}")
    unet_only = flat.get("network_train_unet_only", False)
    if unet_only:
        c.set("train_text_encoder", False, f"network_train_unet_only = {unet_only!r}")
    unet_lr, lr, te_lr = flat.get("unet_lr"), flat.get("learning_rate"), flat.get("text_encoder_lr")
    if unet_lr is not None:
        c.set("learning_rate", unet_lr, f"unet_lr = {unet_lr!r}")
    elif lr is not None:
        c.set("learning_rate", lr, f"learning_rate = {lr!r}")
    if isinstance(te_lr, list):  # SDXL: one per text encoder
        if len(set(te_lr)) > 1:
            c.notes.append(f"text_encoder_lr = {te_lr!r}: one rate for both text encoders here; the first is used")
        te_lr = te_lr[0] if te_lr else None
    if te_lr is not None:
        c.set("text_encoder_lr", te_lr, f"text_encoder_lr = {flat['text_encoder_lr']!r}")
    elif unet_lr is not None and lr is not None and lr != unet_lr:
        # kohya trains the text encoder at learning_rate when only unet_lr is set
        c.set("text_encoder_lr", lr, f"learning_rate = {lr!r}")


def _kohya_optimizer(c: _Collector, flat: dict) -> None:
    opt = flat.get("optimizer_type")
    if opt is None and flat.get("use_8bit_adam"):
        opt = "AdamW8bit"
    if opt is not None:
        source = f"optimizer_type = {opt!r}"
        if str(opt).lower() in FIELD_BY_NAME["optimizer"].choices:  # AdamW, AdamW8bit, Prodigy
            c.set("optimizer", str(opt).lower(), source)
        else:
            c.unmapped.append(source)
            c.notes.append(f"{source}: optimizers here are AdamW, AdamW8bit and Prodigy; AdamW is used")
    names = {"weight_decay": "adam_weight_decay", "eps": "adam_epsilon"}
    for arg in flat.get("optimizer_args") or []:
        key, _, value = str(arg).partition("=")
        key, source = key.strip(), f"optimizer_args {arg!r}"
        if key in names:
            c.set(names[key], value.strip(), source)
        elif key == "betas" and len(value.split(",")) == 2:
            b1, b2 = value.split(",")
            c.set("adam_beta1", b1.strip(), source)
            c.set("adam_beta2", b2.strip(), source)
        else:
            c.unmapped.append(source)


def _kohya_misc(c: _Collector, flat: dict) -> None:
    gamma = flat.get("min_snr_gamma")
    if gamma is not None:
        if gamma == 0:  # kohya's own meaning: `if args.min_snr_gamma:` turns the weighting off at 0
            c.notes.append("min_snr_gamma = 0 turns Min-SNR weighting off in kohya: snr_gamma is left unset")
        else:
            c.set("snr_gamma", gamma, f"min_snr_gamma = {gamma!r}")
    if flat.get("v_parameterization"):
        c.set("prediction_type", "v_prediction", "v_parameterization = true")
    if flat.get("v2"):
        c.set("model_family", "sd2", "v2 = true")
    prefix = flat.get("caption_prefix")
    if prefix:
        c.set("trigger_word", str(prefix).strip().rstrip(",").strip(), f"caption_prefix = {prefix!r}")
        c.notes.append(f"caption_prefix = {prefix!r}: becomes trigger_word, prepended as 'trigger, caption'")
    log_with = flat.get("log_with")
    if log_with in ("tensorboard", "wandb"):
        c.set("report_to", log_with, f"log_with = {log_with!r}")
    elif log_with is not None:
        c.unmapped.append(f"log_with = {log_with!r}")
    if flat.get("logging_dir") is not None:
        c.unmapped.append(f"logging_dir = {flat['logging_dir']!r}")
    warmup = flat.get("lr_warmup_steps")
    if isinstance(warmup, float) and 0 < warmup < 1:
        steps = c.values.get("max_train_steps")
        source = f"lr_warmup_steps = {warmup!r}"
        if steps:
            c.set("lr_warmup_steps", round(warmup * steps), source)
            c.notes.append(f"{source}: a ratio of the {steps} steps in kohya: lr_warmup_steps = "
                           f"{c.values['lr_warmup_steps']}")
        else:
            c.unmapped.append(source)
            c.notes.append(f"{source}: a ratio of the total steps in kohya; set lr_warmup_steps in steps")


def _kohya_defaults(c: _Collector, flat: dict, flux: bool) -> None:
    """kohya's defaults for what the file leaves out, where ours differ (train_network.py, train_util.py)."""
    filled: list[str] = []
    c.default("rank", 4, filled)
    c.default("lora_alpha", 1.0, filled)
    if "max_train_steps" not in flat and "max_train_epochs" not in flat:
        c.default("max_train_steps", 1600, filled)
    elif "max_train_epochs" in flat and "max_train_steps" in flat:
        c.values.pop("max_train_steps", None)  # kohya: max_train_epochs wins
        c.notes.append("max_train_epochs and max_train_steps are both set: kohya trains by epochs, and so does "
                       "this import")
    if "learning_rate" not in flat and "unet_lr" not in flat:
        c.default("learning_rate", 2e-6, filled)
    c.default("lr_warmup_steps", 0, filled)
    c.default("center_crop", not flat.get("random_crop", False), filled)
    if not flat.get("network_train_unet_only"):  # kohya trains the text encoder(s) unless told not to
        c.default("train_text_encoder", not c.values.get("cache_text_encoder_outputs", False), filled)
    if flux:  # networks.lora_flux: every Linear of the blocks, bar what diffusers' names cannot single out
        c.default("lora_target_modules", importers_dit.KOHYA_FLUX_TARGETS, filled)
        missing = "the single blocks' linear2 (proj_out), which a module suffix cannot tell from the final layer's"
    else:
        c.default("lora_target_modules", ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"], filled)
        missing = "each transformer block's proj_in/proj_out; add them to lora_target_modules to match it exactly"
    if filled:
        c.notes.append("kohya's defaults for keys the file leaves out, where ours differ: " + ", ".join(filled)
                       + f" (kohya's LoRA also trains {missing})")
