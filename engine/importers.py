"""Settings from other tools, as schema values: a diffusers training command line, a kohya sd-scripts TOML.

Each importer returns ImportResult(values, unmapped, notes): `values` are coerced and range-checked through
the schema (a bad value raises ConfigError naming the flag or key it came from); `unmapped` lists what has no
field here, with its value; `notes` say where meaning differs (output folders, defaults of the other tool that
differ from ours and were filled in, options accepted but not needed). Combined with a train_data_dir or a
dataset_name, `values` pass engine.config.validate.
"""
from __future__ import annotations

import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from engine.config import FIELD_BY_NAME, ConfigError, _check_range, _coerce, canonical_key, validate


@dataclass
class ImportResult:
    values: dict[str, Any]
    unmapped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Collector:
    def __init__(self):
        self.values: dict[str, Any] = {}
        self.unmapped: list[str] = []
        self.notes: list[str] = []

    def set(self, key: str, value: Any, source: str) -> None:
        f = FIELD_BY_NAME[key]
        try:
            v = _coerce(f, value)
            _check_range(f, v)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        self.values[key] = v

    def default(self, key: str, value: Any, filled: list[str]) -> None:
        """The other tool's default for a setting it was not given, where ours differs."""
        if key not in self.values and FIELD_BY_NAME[key].default != value:
            self.values[key] = value
            filled.append(f"{key} = {value!r}")

    def result(self, what: str) -> ImportResult:
        probe = dict(self.values)
        if probe.get("train_data_dir") is None and probe.get("dataset_name") is None:
            probe["train_data_dir"] = "."  # the importers' promise holds once a dataset is chosen
        try:
            validate(probe)
        except ConfigError as e:
            raise ConfigError(f"{what}: {e}") from None
        return ImportResult(self.values, self.unmapped, self.notes)


def _output_folder(c: _Collector, path: str, source: str) -> None:
    """The diffusers scripts write into output_dir itself; a run here writes to output_dir/adaptor_name/."""
    p = PurePath(path)
    if p.name in ("", ".", ".."):
        c.set("output_dir", path, source)
        c.notes.append(f"{source}: runs are written to {path}/<adaptor_name>/")
        return
    if "adaptor_name" not in c.values:
        c.set("adaptor_name", p.name, source)
    parent = str(p.parent)
    if parent != ".":
        c.set("output_dir", parent, source)
    c.notes.append(f"{source}: the script writes the adaptor straight into that folder; here a run writes to "
                   f"output_dir/adaptor_name/, so output_dir = '{c.values.get('output_dir', 'runs')}' and "
                   f"adaptor_name = '{c.values['adaptor_name']}'")


# ============================================================================= diffusers command lines

_SDPA = "accepted; attention always runs through PyTorch's SDPA here"

# store_true flags of the diffusers scripts that have no field here (their bool fields are known from FIELDS)
_DIFFUSERS_SWITCHES = {
    "push_to_hub", "enable_xformers_memory_efficient_attention", "use_8bit_adam", "with_prior_preservation",
    "use_ema", "debug_loss", "enable_npu_flash_attention", "set_grads_to_none", "offload_ema", "foreach_ema",
    "use_dora", "train_text_encoder_ti", "use_lora", "validation_images_only", "upcast_before_saving",
}
_ACCELERATE_SWITCHES = {
    "multi_gpu", "cpu", "tpu", "use_deepspeed", "use_fsdp", "use_megatron_lm", "use_xpu", "quiet", "q",
    "no_python", "debug", "same_network", "enable_cpu_affinity", "downcast_bf16", "tpu_use_cluster",
    "tpu_use_sudo", "module", "m", "standalone",
}
# the launch, not the config, decides these: say so
_LAUNCH_ONLY = {"num_processes", "multi_gpu", "gpu_ids", "num_machines", "nproc_per_node"}
# defaults of the diffusers LoRA scripts (parse_args) where ours differ; lora_alpha follows rank there
_SCRIPT_DEFAULTS = {
    "train_text_to_image_lora": {"resolution": 512, "train_batch_size": 16, "num_train_epochs": 100,
                                 "checkpointing_steps": 500, "lr_warmup_steps": 500, "rank": 4},
    "train_text_to_image_lora_sdxl": {"resolution": 1024, "train_batch_size": 16, "num_train_epochs": 100,
                                      "checkpointing_steps": 500, "lr_warmup_steps": 500, "rank": 4},
}
_VAR = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def _command_lines(text: str) -> tuple[list[str], dict[str, str]]:
    """Logical lines (backslash continuations joined, comments dropped) and the shell variables set."""
    text = re.sub(r"\\\r?\n", " ", text)
    commands, variables = [], {}
    for line in (ln.strip() for ln in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        assignment = re.fullmatch(r"(?:export\s+)?([A-Za-z_]\w*)=(.*)", line)
        try:
            value = shlex.split(assignment.group(2)) if assignment else None
        except ValueError:
            value = None
        if value is not None and len(value) <= 1:  # `X=1 python train.py` is a command, not an assignment
            variables[assignment.group(1)] = value[0] if value else ""
        else:
            commands.append(line)
    return commands, variables


def _split(line: str, variables: dict[str, str]) -> list[str]:
    line = _VAR.sub(lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), line)
    try:
        return shlex.split(line)
    except ValueError as e:
        raise ConfigError(f"the command cannot be read ({e}): check its quotes") from None


def _is_value(token: str) -> bool:
    return not token.startswith("-") or re.fullmatch(r"-\.?\d[\d.e+-]*", token) is not None  # -1, -0.5


def _read_options(tokens: list[str], i: int, switches: set[str], stop_at_script: bool):
    """`--flag value`, `--flag=value` and switches from tokens[i:]; stops at the first bare word when
    stop_at_script. Returns ([(name, value, as_written)], index after)."""
    out = []
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("-") or tok in ("-", "--"):
            if stop_at_script:
                break
            out.append((None, tok, tok))
            i += 1
            continue
        name, eq, value = tok.lstrip("-").partition("=")
        name = name.replace("-", "_")
        if eq:
            out.append((name, value, tok))
        elif name in switches or i + 1 >= len(tokens) or not _is_value(tokens[i + 1]):
            out.append((name, True, tok))
        else:
            out.append((name, tokens[i + 1], f"{tok}={tokens[i + 1]}"))
            i += 1
        i += 1
    return out, i


def _find_script(tokens: list[str]) -> tuple[list, str, list[str]]:
    """(launcher options, script or module name, the script's arguments) for `accelerate launch`,
    `python [-m accelerate.commands.launch]`, `torchrun` and bare `script.py` forms."""
    rest = list(tokens)
    while rest and re.fullmatch(r"[A-Za-z_]\w*=.*", rest[0]):
        rest.pop(0)  # CUDA_VISIBLE_DEVICES=0 accelerate launch ...
    if not rest:
        return [], "", []
    program = os.path.basename(rest[0])
    if program.startswith("python"):
        j = 1
        while j < len(rest) and rest[j].startswith("-") and rest[j] != "-m":
            j += 1  # interpreter options such as -u
        if rest[j:j + 1] != ["-m"]:
            return [], rest[j] if j < len(rest) else "", rest[j + 1:]
        module, after = (rest[j + 1] if j + 1 < len(rest) else ""), rest[j + 2:]
        if not module.startswith("accelerate"):
            return [], module, after
        rest, program = ["accelerate", "launch"] + (after[1:] if after[:1] == ["launch"] else after), "accelerate"
    if program in ("accelerate", "accelerate.exe", "torchrun"):
        launcher, k = _read_options(rest, 2 if rest[1:2] == ["launch"] else 1, _ACCELERATE_SWITCHES,
                                    stop_at_script=True)
        return launcher, (rest[k] if k < len(rest) else ""), rest[k + 1:]
    return [], rest[0], rest[1:]


def import_diffusers_command(text: str) -> ImportResult:
    """A diffusers training command (`accelerate launch train_text_to_image_lora_sdxl.py --flag=value ...`
    or `python script.py ...`), pasted as the README or a shell script shows it."""
    commands, variables = _command_lines(text)
    candidates = [c for c in commands if re.search(r"\.py\b|\blaunch\b|-m\s", c)]
    if not candidates:
        raise ConfigError("no training command found: paste the whole command, e.g. `accelerate launch "
                          "train_text_to_image_lora.py --pretrained_model_name_or_path=... --learning_rate=1e-4`")
    tokens = _split(candidates[-1], variables)
    launcher, script, script_args = _find_script(tokens)
    if not script or script.startswith("-"):
        raise ConfigError("no training script found in the command: it should name one, e.g. "
                          "train_text_to_image_lora.py")
    switches = _DIFFUSERS_SWITCHES | {f.name for f in FIELD_BY_NAME.values() if f.type is bool}
    args, _ = _read_options(script_args, 0, switches, stop_at_script=False)
    c = _Collector()
    stem = PurePath(script).stem if script.endswith(".py") else script.rsplit(".", 1)[-1]
    given = {name for name, _, _ in args if name}
    for name, value, written in args:
        _map_diffusers_flag(c, name, value, written)
    _map_launcher(c, launcher, given)
    _script_hints(c, stem, given)
    return c.result("the command")


def _map_diffusers_flag(c: _Collector, name, value, written: str) -> None:
    source = written if value is True else f"--{name}={value}"
    if name is None:
        c.unmapped.append(f"{written} (a bare word, not a --flag)")
    elif name == "output_dir":
        _output_folder(c, value, source)
    elif name == "use_8bit_adam":
        c.set("optimizer", "adamw8bit", source)
    elif name == "enable_xformers_memory_efficient_attention":
        c.notes.append(f"{source}: {_SDPA}")
    elif name == "report_to" and value in ("all", "comet_ml"):
        c.unmapped.append(source)
        c.notes.append(f"{source}: report_to here is none, tensorboard or wandb")
    elif name in ("instance_data_dir", "instance_prompt", "class_data_dir", "class_prompt",
                  "with_prior_preservation", "prior_loss_weight", "num_class_images"):
        c.unmapped.append(source)
        if name == "instance_data_dir":
            c.notes.append(f"{source}: DreamBooth images; to train a plain LoRA on them set train_data_dir to "
                           "that folder (with captions, or a trigger_word)")
    else:
        try:
            key = canonical_key(name)
        except ConfigError:
            c.unmapped.append(source)
            return
        c.set(key, value, source)


def _map_launcher(c: _Collector, launcher, given: set[str]) -> None:
    for name, value, written in launcher:
        source = f"accelerate {written}"
        if name == "mixed_precision":
            if "mixed_precision" not in given:  # the script's own flag wins, as in the scripts
                c.set("mixed_precision", value, source)
            continue
        if name in ("m", "module"):
            continue
        c.unmapped.append(source)
        if name in _LAUNCH_ONLY:
            c.notes.append(f"{source}: how many processes or GPUs train is chosen when a run starts, not in "
                           "the config (headless: accelerate launch --num_processes N -m engine.train CONFIG)")


def _script_hints(c: _Collector, stem: str, given: set[str]) -> None:
    if "sdxl" in stem:
        c.values.setdefault("model_family", "sdxl")
    if "dreambooth" in stem:
        c.notes.append(f"{stem}: DreamBooth (instance and class images, prior preservation) is not a method "
                       "here yet; the flags that also fit a LoRA run were imported")
    elif stem.startswith("train_text_to_image") and "lora" not in stem:
        c.values.setdefault("method", "full")
        c.notes.append(f"{stem} fine-tunes every UNet weight: method = 'full'")
    defaults = _SCRIPT_DEFAULTS.get(stem)
    if defaults is None:
        if not stem.startswith("train_"):
            c.notes.append(f"'{stem}' is not a diffusers training script known here: flags were mapped by name, "
                           "and its defaults were not filled in")
        return
    filled: list[str] = []
    for key, value in defaults.items():
        c.default(key, value, filled)
    if "lora_alpha" not in given:  # the scripts build LoraConfig(r=rank, lora_alpha=rank)
        c.values["lora_alpha"] = float(c.values.get("rank", FIELD_BY_NAME["rank"].default))
        filled.append(f"lora_alpha = {c.values['lora_alpha']!r} (= rank, as the script sets it)")
    if filled:
        c.notes.append(f"{stem}.py defaults for flags the command leaves out, where ours differ: "
                       + ", ".join(filled))


# ============================================================================= kohya sd-scripts TOML

# kohya keys with a field of the same name here
_KOHYA_SAME = ("pretrained_model_name_or_path", "caption_extension", "train_batch_size", "seed", "lr_scheduler",
               "gradient_accumulation_steps", "mixed_precision", "gradient_checkpointing", "noise_offset",
               "cache_latents", "cache_text_encoder_outputs", "enable_bucket", "min_bucket_reso", "max_bucket_reso",
               "bucket_reso_steps", "bucket_no_upscale", "caption_dropout_rate", "max_grad_norm", "torch_compile",
               "max_train_steps", "lr_warmup_steps")
_KOHYA_RENAMES = {
    **{k: k for k in _KOHYA_SAME}, "vae": "pretrained_vae_model_name_or_path", "caption_extention": "caption_extension",
    "network_dim": "rank", "network_alpha": "lora_alpha", "output_name": "adaptor_name",
    "save_every_n_steps": "checkpointing_steps", "lr_scheduler_num_cycles": "lr_num_cycles",
    "lr_scheduler_power": "lr_power", "cache_latents_to_disk": "cache_latents",
    "cache_text_encoder_outputs_to_disk": "cache_text_encoder_outputs", "flip_aug": "random_flip",
    "max_data_loader_n_workers": "dataloader_num_workers", "dataset_repeats": "repeats",
    "sample_every_n_epochs": "validation_epochs", "max_train_epochs": "num_train_epochs",
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
    "save_every_n_epochs": "checkpoints here are saved every N steps (checkpointing_steps)",
    "sample_every_n_steps": "sample images here are made every N epochs (validation_epochs)",
    "sample_sampler": "sample images use the base model's own scheduler",
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
    """A .txt prompt file: the first prompt becomes the validation prompt, with its --s/--l/--d options."""
    source = f"sample_prompts = {value!r}"
    path = Path(str(value))
    if path.suffix.lower() != ".txt" or not path.is_file():
        c.unmapped.append(source)
        c.notes.append(f"{source}: not a .txt prompt file found here; set validation_prompt yourself")
        return
    lines = (ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines())
    prompts = [ln for ln in lines if ln and not ln.startswith("#")]
    if not prompts:
        c.notes.append(f"{source}: the file holds no prompt")
        return
    prompt, *options = re.split(r"\s--(?=[a-z]\s)", " " + prompts[0])
    c.set("validation_prompt", prompt.strip(), source)
    for option in options:
        letter, _, arg = option.partition(" ")
        key = {"s": "num_inference_steps", "l": "guidance_scale", "d": "validation_seed"}.get(letter)
        if key:
            c.set(key, arg.strip(), f"{source} (--{letter})")
    if len(prompts) > 1:
        c.notes.append(f"{source}: only its first prompt is used ({len(prompts)} in the file)")


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
    """A kohya sd-scripts config (train_network.py / sdxl_train_network.py --config_file)."""
    flat = _kohya_flat(text)
    c = _Collector()
    for key, value in flat.items():
        source = f"{key} = {value!r}"
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
                     "v_parameterization", "caption_prefix", "log_with", "optimizer_args", "logging_dir"):
            continue  # read below, where they depend on each other
        elif value is not False and value is not None:  # `not in (False, None)` would drop 0 (0 == False)
            if key in _KOHYA_NOTES:
                c.notes.append(f"{source}: {_KOHYA_NOTES[key]}")
            if key not in _KOHYA_ACCEPTED:
                c.unmapped.append(source)
    _kohya_network(c, flat)
    _kohya_optimizer(c, flat)
    _kohya_misc(c, flat)
    _kohya_defaults(c, flat)
    return c.result("the kohya config")


def _kohya_network(c: _Collector, flat: dict) -> None:
    module = flat.get("network_module")
    if module not in (None, "networks.lora"):
        c.unmapped.append(f"network_module = {module!r}")
        c.notes.append(f"network_module = {module!r}: only plain LoRA (networks.lora) is trained here"
                       + ("; LyCORIS algorithms (LoCon, LoHa, LoKr) are not supported" if "lycoris" in str(module)
                          else ""))
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


def _kohya_defaults(c: _Collector, flat: dict) -> None:
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
    c.default("lora_target_modules", ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"], filled)
    if filled:
        c.notes.append("kohya's defaults for keys the file leaves out, where ours differ: " + ", ".join(filled)
                       + " (kohya's LoRA also trains each transformer block's proj_in/proj_out; add them to "
                       "lora_target_modules to match it exactly)")
