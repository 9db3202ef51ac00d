"""Presets: named TOML configs that the studio lists, loads, saves and deletes.

Shipped presets are the `*.toml` files in the project's presets/ folder, named by file stem ("toy-lora").
The user's own live in ADAPTOR_STUDIO_HOME/presets/user/ and are named "user/<stem>", so they never shadow
a shipped one; a user preset may not take a shipped preset's name either, to keep the two lists apart.

A saved preset holds every setting of the schema (unset optional ones left out: TOML has no null), in the
schema's tables and order, behind a fixed header comment. Loading it and saving it again gives the same bytes.

Paths inside a preset (train_data_dir, output_dir, a local model or dataset folder) are kept exactly as
written, never rewritten on load or save. A relative path is relative to the project folder, where the studio
and `python -m engine.train` run ("examples/datasets/toy-star"), not to the preset file: a preset means the
same wherever it is stored.

Importers for other tools' settings (a diffusers training command line, a kohya TOML) are in
engine.importers and re-exported here.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from engine.config import (FIELD_BY_NAME, Config, ConfigError, atomic_write_bytes, flatten, read_toml,
                           to_toml_dict, validate)
from engine.importers import ImportResult, import_diffusers_command, import_kohya_toml
from engine.paths import safe_child, shipped_presets_dir, user_presets_dir

__all__ = ["Preset", "list_presets", "find_preset", "read_preset", "preset_values", "preset_bytes",
           "save_user_preset", "delete_user_preset", "user_preset_path", "ImportResult",
           "import_diffusers_command", "import_kohya_toml", "import_pasted"]

USER_PREFIX = "user/"
HEADER = ("# Adaptor Studio preset: every setting, in the schema's tables (python -m engine.train --help-config).\n"
          "# Relative paths are relative to the project folder, where the studio and engine.train run.\n\n")
# characters no file name on any system may hold, so a preset saved on Linux still opens elsewhere
_FORBIDDEN = set('/\\:*?"<>|')


@dataclass(frozen=True)
class Preset:
    name: str   # "toy-lora" (shipped) or "user/my-style" (the user's)
    path: Path
    user: bool


def _toml_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    # hidden files are atomic_write_bytes' temp files (and editors' backups)
    return [p for p in folder.glob("*.toml") if p.is_file() and not p.name.startswith(".")]


def list_presets() -> list[Preset]:
    """Shipped presets first (the toy ones, which run offline, before the rest; each group by name), then
    the user's by name."""
    shipped = sorted(_toml_files(shipped_presets_dir()), key=lambda p: (not p.stem.startswith("toy-"), p.stem))
    user = sorted(_toml_files(user_presets_dir()), key=lambda p: p.stem)
    return ([Preset(p.stem, p, False) for p in shipped]
            + [Preset(USER_PREFIX + p.stem, p, True) for p in user])


def _available(presets: list[Preset]) -> str:
    return ", ".join(p.name for p in presets) or "none"


def find_preset(name: str) -> Preset:
    presets = list_presets()
    for p in presets:
        if p.name == name:
            return p
    raise ConfigError(f"no preset named '{name}'; available: {_available(presets)}")


def _with_path(path, e: ConfigError) -> ConfigError:
    text = str(e)
    return ConfigError(text if str(path) in text else f"{path}: {text}")


def read_preset(path: str | Path) -> dict[str, Any]:
    """The file's own values under schema names (aliases resolved, tables flattened); defaults not filled."""
    try:
        return flatten(read_toml(path))
    except ConfigError as e:
        raise _with_path(path, e) from None


def preset_values(path: str | Path) -> Config:
    """The preset validated, every field present (defaults filled in)."""
    values = read_preset(path)
    try:
        return validate(values)
    except ConfigError as e:
        raise _with_path(path, e) from None


def _blank_to_unset(values: dict[str, Any]) -> dict[str, Any]:
    """An empty optional text (a form's empty box, `x = ""` in a file) means unset, as a missing key does, so
    a form and the file it came from save the same bytes."""
    return {k: None if FIELD_BY_NAME[k].optional and isinstance(v, str) and not v.strip() else v
            for k, v in values.items()}


def preset_bytes(values: dict[str, Any] | Config) -> bytes:
    """The TOML a save writes: validated, every field in the schema's tables and order, deterministic.

    `values` may be a Config or a dict as a form or a TOML file gives it (aliases, tables, numbers as
    floats, lists as "a, b" text, "" for an unset optional field)."""
    raw = values.to_dict() if isinstance(values, Config) else flatten(dict(values))
    cfg = validate(_blank_to_unset(raw))
    return (HEADER + tomli_w.dumps(to_toml_dict(cfg))).encode("utf-8")


def _stem(name: str) -> str:
    stem = name[len(USER_PREFIX):] if name.startswith(USER_PREFIX) else name
    return stem[:-len(".toml")] if stem.endswith(".toml") else stem


def user_preset_path(name: str) -> Path:
    """Where the user preset `name` ("my-style", "user/my-style" or "my-style.toml") lives; refuses names
    that are not a plain file name."""
    stem = _stem(name)
    bad = (not stem or stem != stem.strip() or stem.startswith(".") or len(stem) > 100
           or any(c in _FORBIDDEN or ord(c) < 32 for c in stem))
    if bad:
        raise ConfigError(f"preset name '{name}' is not a plain name: use letters, digits, spaces, '-' and '_' "
                          "(no slashes, no leading dot, at most 100 characters), e.g. my-sdxl-style")
    try:
        return safe_child(user_presets_dir(), stem + ".toml")
    except ValueError as e:
        raise ConfigError(f"preset name '{name}': {e}") from None


def _shipped_stems() -> set[str]:
    return {p.stem for p in _toml_files(shipped_presets_dir())}


def save_user_preset(name: str, values: dict[str, Any] | Config, overwrite: bool = True) -> Path:
    """Validate, then write atomically into the user presets folder; nothing is written if anything is wrong.
    Saving again under the same name replaces the user's preset unless overwrite is False."""
    path = user_preset_path(name)
    if path.stem in _shipped_stems():
        raise ConfigError(f"'{path.stem}' is the name of a shipped preset; save yours under another name, "
                          f"e.g. '{path.stem}-mine'")
    if not overwrite and path.exists():
        raise ConfigError(f"a user preset named '{USER_PREFIX}{path.stem}' exists already; pick another name")
    data = preset_bytes(values)
    atomic_write_bytes(path, data)
    return path


def delete_user_preset(name: str) -> Path:
    """Remove a user preset ("my-style" or "user/my-style"); shipped presets are refused. Returns the path."""
    if not name.startswith(USER_PREFIX) and _stem(name) in _shipped_stems():
        raise ConfigError(f"'{name}' is a shipped preset and cannot be deleted (it comes with the studio); "
                          "only your own presets under user/ can be")
    path = user_preset_path(name)
    if not path.is_file():
        users = [p for p in list_presets() if p.user]
        raise ConfigError(f"no user preset named '{USER_PREFIX}{path.stem}'; yours: {_available(users)}")
    path.unlink()
    return path


def import_pasted(text: str) -> ImportResult:
    """Pasted settings of either kind: a kohya config is TOML; anything else is read as a command line
    (which may start with `export VAR=...` lines, `CUDA_VISIBLE_DEVICES=0`, python or torchrun)."""
    try:
        is_toml = bool(tomllib.loads(text))
    except tomllib.TOMLDecodeError:
        is_toml = False
    return import_kohya_toml(text) if is_toml else import_diffusers_command(text)
