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
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from engine import importers_dit
from engine.config import FIELD_BY_NAME, ConfigError, canonical_key, check_value, validate


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
        self.sources: dict[str, str] = {}  # key -> the flag or key it came from

    def set(self, key: str, value: Any, source: str) -> None:
        try:
            v = check_value(key, value)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
        self.values[key] = v
        self.sources[key] = source

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

_SDPA = "accepted; attention runs through PyTorch's SDPA here (attention = \"sdpa\", the default)"

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
    dit = importers_dit.DIFFUSERS_SCRIPTS.get(stem)
    for name, value, written in args:
        source = written if value is True else f"--{name}={value}"
        if not (dit and importers_dit.diffusers_flag(c, dit, name, value, source)):
            _map_diffusers_flag(c, name, value, written, source)
    _map_launcher(c, launcher, given)
    _script_hints(c, stem, given, {name: value for name, value, _ in args if name}, dit)
    return c.result("the command")


def _map_diffusers_flag(c: _Collector, name, value, written: str, source: str) -> None:
    if name is None:
        c.unmapped.append(f"{written} (a bare word, not a --flag)")
    elif name == "output_dir":
        _output_folder(c, value, source)
    elif name == "use_8bit_adam":
        c.set("optimizer", "adamw8bit", source)
    elif name == "optimizer":  # the scripts compare args.optimizer.lower(): AdamW, Prodigy
        c.set("optimizer", str(value).lower(), source)
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
            c.notes.append(f"{source}: how many processes or GPUs train is this machine's choice, made when a run "
                           "starts: set it in the [distributed] table (num_processes, gpu_ids; the studio's GPUs "
                           "and machines settings), headless python -m engine.launch CONFIG")


def _script_hints(c: _Collector, stem: str, given: set[str], args: dict, dit: str | None) -> None:
    filled: list[str] = []
    if dit:
        importers_dit.diffusers_hints(c, dit, args, filled)
    if "sdxl" in stem:
        c.values.setdefault("model_family", "sdxl")
    if "dreambooth" in stem:
        c.notes.append(f"{stem}: DreamBooth (instance and class images, prior preservation) is not a method "
                       "here yet; the flags that also fit a LoRA run were imported")
    elif stem.startswith("train_text_to_image") and "lora" not in stem:
        c.values.setdefault("method", "full")
        c.notes.append(f"{stem} fine-tunes every UNet weight: method = 'full'")
    defaults = _SCRIPT_DEFAULTS.get(stem) or importers_dit.DIFFUSERS_DEFAULTS.get(stem)
    if defaults is None:
        if not stem.startswith("train_"):
            c.notes.append(f"'{stem}' is not a diffusers training script known here: flags were mapped by name, "
                           "and its defaults were not filled in")
        return
    for key, value in defaults.items():
        c.default(key, value, filled)
    if "lora_alpha" not in given and "lora_alpha" not in defaults:  # LoraConfig(r=rank, lora_alpha=rank)
        c.values["lora_alpha"] = float(c.values.get("rank", FIELD_BY_NAME["rank"].default))
        filled.append(f"lora_alpha = {c.values['lora_alpha']!r} (= rank, as the script sets it)")
    if filled:
        c.notes.append(f"{stem}.py defaults for flags the command leaves out, where ours differ: "
                       + ", ".join(filled))
    if dit:
        importers_dit.drop_unet_only(c, dit)


# ============================================================================= kohya sd-scripts TOML


from engine.importers_kohya import import_kohya_toml  # noqa: E402  (after _Collector, which it uses)

__all__ = ["ImportResult", "import_diffusers_command", "import_kohya_toml"]
