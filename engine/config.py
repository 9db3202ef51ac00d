"""The one config schema at work: TOML files, `--set` overrides, validation and the UI form all come from
FIELDS (declared in engine/schema.py). A TOML file may hold any key at top level or inside any table; tables
only group keys for people to read. A zero is a value: only a missing key means "default".
"""
from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Iterable

import tomli_w

from engine import distributed
from engine.paths import UnsafePath, caption_extension
from engine.atomic import write_bytes as atomic_write_bytes  # noqa: F401 - the name other modules import
from engine.sampling import prompts, samplers
from engine.schema import FIELDS, Field  # the settings themselves; this module reads and checks them


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the key, the value and what is allowed."""


FIELD_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
GROUPS: list[str] = list(dict.fromkeys(f.group for f in FIELDS))
_ALIASES: dict[str, str] = {a: f.name for f in FIELDS for a in f.aliases}
# Transformer Lab calls report_to a boolean.
_VALUE_ALIASES = {"log_to_wandb": ("report_to", lambda v: "wandb" if _to_bool("log_to_wandb", v) else "none")}


class Config:
    """Resolved settings: every field present, attribute access (`cfg.learning_rate`)."""

    def __init__(self, values: dict[str, Any]):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # e.g. pickle probing __setstate__ before _values exists
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError("Config is read-only; use replace()")

    def replace(self, **changes) -> "Config":
        return validate({**self._values, **changes})

    def __getstate__(self):
        return self._values

    def __setstate__(self, values):
        object.__setattr__(self, "_values", values)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def __eq__(self, other):
        return isinstance(other, Config) and self._values == other._values

    def __repr__(self):
        return f"Config({self._values!r})"


# ----------------------------------------------------------------------------- coercion and checks

def _to_bool(key, v):
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
        return v.strip().lower() in ("true", "yes", "1", "on")
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    raise ConfigError(f"{key} = {v!r} is not a boolean: use true or false")


def _coerce(f: Field, v: Any) -> Any:
    key = f.name
    if v is None:
        if f.optional:
            return None
        raise ConfigError(f"{key} must be set ({f.help})")
    if f.type is bool:
        return _to_bool(key, v)
    if f.type is int:
        if isinstance(v, bool):
            raise ConfigError(f"{key} = {v!r} is not a whole number")
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, str):
            try:
                v = int(v.strip())
            except ValueError:
                raise ConfigError(f"{key} = {v!r} is not a whole number") from None
        if not isinstance(v, int):
            raise ConfigError(f"{key} = {v!r} is not a whole number")
        return v
    if f.type is float:
        if isinstance(v, bool):
            raise ConfigError(f"{key} = {v!r} is not a number")
        if isinstance(v, str):
            try:
                v = float(v.strip())
            except ValueError:
                raise ConfigError(f"{key} = {v!r} is not a number") from None
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ConfigError(f"{key} = {v!r} is not a finite number")
        return float(v)
    if f.type is list:
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) for s in v):
            raise ConfigError(f"{key} = {v!r} must be a list of names, e.g. [\"to_q\", \"to_v\"]")
        return list(v)
    if f.type is str:
        if not isinstance(v, str):
            raise ConfigError(f"{key} = {v!r} must be text (in TOML, put it in quotes)")
        return samplers.canonical(v) if key == "sample_sampler" else v  # "DPM++ 2M Karras" -> dpmpp_2m_karras
    raise TypeError(f"unsupported field type {f.type}")


def allowed_text(f: Field) -> str:
    if f.choices:
        return "one of " + ", ".join(f.choices)
    parts = []
    if f.min is not None and f.max is not None:
        parts.append(f"from {f.min:g} to {f.max:g}")
    elif f.min is not None:
        parts.append(f"at least {f.min:g}")
    elif f.max is not None:
        parts.append(f"at most {f.max:g}")
    if f.multiple_of:
        parts.append(f"a multiple of {f.multiple_of}")
    return " and ".join(parts)


def _check_range(f: Field, v: Any) -> None:
    if v is None:
        return
    bad = (
        (f.choices and v not in f.choices)
        or (f.min is not None and v < f.min)
        or (f.max is not None and v > f.max)
        or (f.multiple_of and v % f.multiple_of)
    )
    if bad:
        raise ConfigError(f"{f.name} = {v!r} is out of range: it must be {allowed_text(f)}")


def canonical_key(key: str) -> str:
    """The schema name for a key or alias; unknown keys raise naming the closest valid name."""
    if key in FIELD_BY_NAME:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    known = list(FIELD_BY_NAME) + list(_ALIASES) + list(_VALUE_ALIASES)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else "; see the keys in presets/ or `python -m engine.train --help-config`"
    raise ConfigError(f"unknown key '{key}'{hint}")


def validate(raw: dict[str, Any]) -> Config:
    """Defaults filled in, types coerced, ranges and cross-field rules checked."""
    values = {}
    for f in FIELDS:
        v = _coerce(f, raw.get(f.name, f.default))
        _check_range(f, v)
        values[f.name] = v
    extra = set(raw) - set(values)
    if extra:
        canonical_key(sorted(extra)[0])  # raises with a hint
    if (values["train_data_dir"] is None) == (values["dataset_name"] is None):
        raise ConfigError("set exactly one of train_data_dir (a local folder) and dataset_name "
                          "(a datasets hub id or saved dataset)")
    name = values["adaptor_name"]
    if not name or name in (".", "..") or any(c in name for c in "/\\:") or name != name.strip():
        raise ConfigError(f"adaptor_name = {name!r} must be a plain name (no slashes, colons or dots only), "
                          "e.g. my-lora")
    if values["cache_text_encoder_outputs"] and values["train_text_encoder"]:
        raise ConfigError("cache_text_encoder_outputs = true cannot be used with train_text_encoder = true "
                          "(trained encoders change their outputs every step); turn one off")
    _check_variants(values)
    if values["enable_bucket"]:
        lo, hi, res = values["min_bucket_reso"], values["max_bucket_reso"], values["resolution"]
        if lo > res or hi < res:
            raise ConfigError(f"bucket sides must allow the resolution: min_bucket_reso = {lo} <= resolution = "
                              f"{res} <= max_bucket_reso = {hi}")
        if lo % values["bucket_reso_steps"] or hi % values["bucket_reso_steps"]:
            raise ConfigError(f"min_bucket_reso = {lo} and max_bucket_reso = {hi} must be multiples of "
                              f"bucket_reso_steps = {values['bucket_reso_steps']}")
    _check_method_fields(values)
    sharding = distributed.field_problem(values, {f.name: f.default for f in FIELDS})
    if sharding:
        raise ConfigError(sharding)
    _check_sampling(values)
    _check_distributed(values)
    try:
        values["caption_extension"] = caption_extension(values["caption_extension"])
    except UnsafePath as e:
        raise ConfigError(f"caption_extension: {e}") from None
    return Config(values)


LAUNCH_KEYS = ("num_processes", "gpu_ids", "num_machines", "machine_rank", "main_process_ip", "main_process_port")


def _check_distributed(values: dict[str, Any]) -> None:
    """The [distributed] table: what accelerate's launcher would refuse, or hang on, said before a launch."""
    ids = values["gpu_ids"]
    if ids is not None:
        ids = values["gpu_ids"] = ids.strip().replace(" ", "")
        parts = ids.split(",")
        if ids.lower() == "all":
            values["gpu_ids"] = "all"
        elif not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
            raise ConfigError(f"gpu_ids = {ids!r} must be GPU ids separated by commas, each once (e.g. \"0,1\"), "
                              "or \"all\"")
    config_file = values["accelerate_config_file"]
    if config_file is not None:
        given = [k for k in LAUNCH_KEYS if values[k] is not None]
        if given:
            raise ConfigError(f"accelerate_config_file = {config_file!r} already says how to launch; unset "
                              f"{' and '.join(given)} (or unset accelerate_config_file)")
        if Path(config_file).suffix.lower() not in (".yaml", ".yml", ".json"):
            raise ConfigError(f"accelerate_config_file = {config_file!r} must be a .yaml, .yml or .json file "
                              "(what `accelerate config` writes)")
        return
    machines, rank = values["num_machines"] or 1, values["machine_rank"]
    if rank is not None and rank >= machines:
        raise ConfigError(f"machine_rank = {rank} must be below num_machines = {machines} (ranks count from 0, "
                          "the main machine)")
    if machines > 1 and not values["main_process_ip"]:
        raise ConfigError(f"num_machines = {machines} needs main_process_ip, the address of the machine of rank 0 "
                          "(or leave both unset and give python -m engine.cluster --nodes and --main-ip)")
    total = values["num_processes"]
    if total is not None and total % machines:
        raise ConfigError(f"num_processes = {total} counts the processes of every machine together (as accelerate "
                          f"does): it must be a multiple of num_machines = {machines}, e.g. {machines * max(1, total // machines)}")
    if total is not None and ids not in (None, "all") and total // machines > len(ids.split(",")):
        raise ConfigError(f"num_processes = {total} is {total // machines} per machine, but gpu_ids = {ids!r} lists "
                          f"{len(ids.split(','))}: one process per GPU")


def _check_sampling(values: dict[str, Any]) -> None:
    try:
        prompts.parse(values["validation_prompt"])
    except ValueError as e:
        raise ConfigError(f"validation_prompt {e}") from None
    if values["validation_split"] and values["validation_data_dir"]:
        raise ConfigError("set one of validation_split (hold out part of train_data_dir) and validation_data_dir "
                          "(a separate folder), not both")
    if values["clip_skip"] > 1 and values["model_family"] == "sdxl":
        raise ConfigError(f"clip_skip = {values['clip_skip']} applies to SD 1.x/2.x; SDXL already uses the "
                          "text encoders' layer before the last: set clip_skip = 1")


def _check_variants(values: dict[str, Any]) -> None:
    """Combinations of the method, adaptor and objective options that cannot work together."""
    kind = values["lora_type"]
    if values["use_dora"] and kind != "lora":
        raise ConfigError(f"use_dora = true needs lora_type = \"lora\" (DoRA is a LoRA variant), not {kind!r}")
    if kind != "lora" and values["lora_dropout"]:
        raise ConfigError(f"lora_dropout applies to lora_type = \"lora\"; for {kind} use rank_dropout or "
                          "module_dropout")
    if kind == "lora" and (values["rank_dropout"] or values["module_dropout"]):
        raise ConfigError("rank_dropout and module_dropout apply to lora_type = \"loha\" or \"lokr\"; for lora "
                          "use lora_dropout")
    if values["do_edm_style_training"] and values["snr_gamma"]:
        raise ConfigError("do_edm_style_training = true cannot be used with snr_gamma (min_snr_gamma): EDM "
                          "training weights the loss by its own sigmas; unset snr_gamma or turn EDM off")
    if values["use_ema"] and values["method"] != "full":
        raise ConfigError(f"use_ema = true needs method = \"full\" (method = {values['method']!r} trains an "
                          "adaptor, which keeps no EMA)")
    jitter = [values[f"color_jitter_{k}"] for k in ("brightness", "contrast", "saturation", "hue")]
    if any(jitter) and values["cache_latents"]:
        raise ConfigError("color_jitter_* needs fresh pixels each step, so it cannot be used with cache_latents "
                          "= true; turn one off")
    if values["shuffle_caption"] and values["cache_text_encoder_outputs"]:
        raise ConfigError("shuffle_caption = true makes new captions every step, so it cannot be used with "
                          "cache_text_encoder_outputs = true; turn one off")
def _check_method_fields(values: dict[str, Any]) -> None:
    """What dreambooth and textual_inversion need, named key by key."""
    method = values["method"]
    if method == "dreambooth":
        if not values["instance_prompt"]:
            raise ConfigError("method = \"dreambooth\" needs instance_prompt, the caption of every subject image "
                              "with a rare identifier, e.g. instance_prompt = \"a photo of sks dog\"")
        if values["trigger_word"]:
            raise ConfigError("trigger_word is not used with method = \"dreambooth\": every image trains with "
                              "instance_prompt; put the identifier there and leave trigger_word empty")
        if values["with_prior_preservation"]:
            missing = [k for k in ("class_prompt", "class_data_dir") if not values[k]]
            if missing:
                raise ConfigError(f"with_prior_preservation = true needs {' and '.join(missing)} (e.g. class_prompt "
                                  "= \"a photo of dog\", class_data_dir = \"class_images/dog\")")
            if values["enable_bucket"]:
                raise ConfigError("with_prior_preservation cannot be used with enable_bucket yet (each batch "
                                  "pairs subject and class images of one size); turn enable_bucket off")
    elif values["with_prior_preservation"]:
        raise ConfigError(f"with_prior_preservation = true is a DreamBooth setting; set method = \"dreambooth\" "
                          f"(method is {method!r})")
    if method == "textual_inversion":
        missing = [k for k in ("placeholder_token", "initializer_token") if not values[k]]
        if missing:
            raise ConfigError(f"method = \"textual_inversion\" needs {' and '.join(missing)}, e.g. "
                              "placeholder_token = \"<cat-toy>\", initializer_token = \"toy\"")
        if values["cache_text_encoder_outputs"]:
            raise ConfigError("cache_text_encoder_outputs = true cannot be used with method = "
                              "\"textual_inversion\" (the trained embeddings change the outputs); turn it off")


# ----------------------------------------------------------------------------- reading and writing

def flatten(data: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Any key at any table depth counts; aliases become schema names; a key given twice is an error."""
    out: dict[str, Any] = {}
    for key, v in data.items():
        if isinstance(v, dict):
            for k2, v2 in flatten(v, f"{where}{key}.").items():
                if k2 in out:
                    raise ConfigError(f"{k2} is set twice (again in [{where}{key}])")
                out[k2] = v2
            continue
        if key in _VALUE_ALIASES:
            key, conv = _VALUE_ALIASES[key]
            v = conv(v)
        else:
            try:
                key = canonical_key(key)
            except ConfigError as e:
                raise ConfigError(f"{e} (in {'[' + where[:-1] + ']' if where else 'the top level'})") from None
        if key in out:
            raise ConfigError(f"{key} is set twice (once perhaps under an alias)")
        out[key] = v
    return out


def parse_override(text: str, field_type: type | None = None) -> tuple[str, Any]:
    """`key=value`. Text fields take the value as written (adaptor_name=nan stays "nan"); other values are
    read as TOML values when they are one (5e-5, true, [..]), else kept as text for the type check."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: write it as key=value, e.g. --set learning_rate=5e-5")
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    if field_type is str and not isinstance(parsed, str):  # a quoted string is unquoted; anything else as typed
        parsed = value
    return key.strip(), parsed


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        inside = " (a run folder: its config is config.toml)" if (p / "config.toml").is_file() else ""
        raise ConfigError(f"config file {p} is a folder{inside}; give the .toml file itself")
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        text = p.read_text(encoding="utf-8")
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p} is not valid TOML: {_toml_problem(e, text)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not a UTF-8 text file") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read: {e.strerror}") from None


def _toml_problem(e: tomllib.TOMLDecodeError, text: str) -> str:
    """tomllib's message, naming the key when it is set twice (tomllib gives only its line and column)."""
    m = re.match(r"Cannot overwrite a value \(at line (\d+), column \d+\)", str(e))
    lines = text.splitlines()
    if not m or int(m.group(1)) > len(lines):
        return str(e)
    line = int(m.group(1))
    key = lines[line - 1].split("=", 1)[0].strip()
    return f"{key} is set twice (again at line {line}); keep one of them"


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = (),
                base: dict[str, Any] | None = None) -> Config:
    raw: dict[str, Any] = dict(base or {})
    if path is not None:
        try:
            raw.update(flatten(read_toml(path)))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in _VALUE_ALIASES:
            key, conv = _VALUE_ALIASES[key]
            raw[key] = conv(parse_override(item)[1])
            continue
        try:
            key = canonical_key(key)
        except ConfigError as e:
            raise ConfigError(f"--set {item}: {e}") from None
        raw[key] = parse_override(item, FIELD_BY_NAME[key].type)[1]
    return validate(raw)


def to_toml_dict(cfg: Config, only_changed: bool = False) -> dict[str, dict[str, Any]]:
    """Grouped tables in schema order; unset values are left out (TOML has no null)."""
    out: dict[str, dict[str, Any]] = {}
    for f in FIELDS:
        v = getattr(cfg, f.name)
        if v is None or (only_changed and v == f.default):
            continue
        out.setdefault(f.group, {})[f.name] = v
    return out


def save_config(cfg: Config, path: str | os.PathLike, only_changed: bool = False) -> None:
    atomic_write_bytes(path, tomli_w.dumps(to_toml_dict(cfg, only_changed)).encode("utf-8"))


def describe_fields() -> str:
    """Plain-text list of every key, for --help-config."""
    lines = []
    for g in GROUPS:
        lines.append(f"[{g}]")
        for f in (f for f in FIELDS if f.group == g):
            allowed = allowed_text(f)
            default = "unset" if f.default is None else repr(f.default)
            alias = f" (alias: {', '.join(f.aliases)})" if f.aliases else ""
            lines.append(f"  {f.name} = {default}{alias}  {f.help}" + (f" [{allowed}]" if allowed else ""))
    return "\n".join(lines)


def check_value(key: str, value: Any) -> Any:
    """One field on its own (type and range), as the UI checks it next to its widget; returns it coerced."""
    f = FIELD_BY_NAME[canonical_key(key)]
    v = _coerce(f, value)
    _check_range(f, v)
    return v
