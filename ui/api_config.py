"""A config that arrives over the remote API, read and held inside the studio's home.

The studio's own page may name any folder (it is its user's machine); a remote caller may not: every path a
config holds must lie inside the home, so a script cannot train on, read or write anything else. Relative
paths are taken from the home (a remote caller knows the home's layout, not the project folder's) and written
into the queued config as absolute paths. Outputs go under runs/ only, never into its hidden folders (the
queue's state, a run's .earlier-run).
"""
from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

from engine.builtin import is_builtin
from engine.config import Config, ConfigError, flatten, load_config
from engine.paths import PROJECT_ROOT, UnsafePath, inside

# always local folders
LOCAL_KEYS = ("train_data_dir", "class_data_dir", "validation_data_dir", "resume_from_checkpoint",
              "pretrained_transformer_model_name_or_path", "accelerate_config_file")
# a local folder, or else a built-in (models only) or a hub id owner/name
SOURCE_KEYS = ("pretrained_model_name_or_path", "pretrained_vae_model_name_or_path", "dataset_name")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def read_submission(toml_text: str | None, values: dict | None, overrides: list[str] | None) -> Config:
    """The validated settings of a submission: TOML text or JSON values, then `key=value` overrides (as --set)."""
    if (toml_text is None) == (values is None):
        raise ConfigError("give the config as exactly one of \"toml\" (the text of a config file) or \"values\" "
                          "(an object of settings)")
    if toml_text is not None:
        if not isinstance(toml_text, str):
            raise ConfigError("\"toml\" must be the text of a config file")
        try:
            raw = flatten(tomllib.loads(toml_text))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"the config is not valid TOML: {e}") from None
    else:
        if not isinstance(values, dict):
            raise ConfigError("\"values\" must be an object of settings, e.g. {\"learning_rate\": 1e-4}")
        raw = flatten(values)
    overrides = [] if overrides is None else overrides
    if not isinstance(overrides, list) or not all(isinstance(s, str) for s in overrides):
        raise ConfigError("\"set\" must be a list of key=value texts, e.g. [\"max_train_steps=10\"]")
    return load_config(None, overrides, base=raw)


def _local(home: Path, key: str, value: str) -> str:
    path = Path(os.path.expanduser(value))  # as the engine reads it
    try:
        return str(inside(home, path, key))
    except UnsafePath:
        raise ConfigError(f"{key} = {value!r} is outside the studio's home {home}: a remote config may only "
                          "name folders inside it (copy the data there, e.g. into datasets/)") from None


def _source(home: Path, key: str, value: str) -> str:
    if key != "dataset_name" and is_builtin(value):
        return value
    if not HUB_ID.match(value) or os.path.exists(home / value):
        return _local(home, key, value)
    project = PROJECT_ROOT / value
    if os.path.exists(project) and not Path(os.path.abspath(project)).is_relative_to(home):
        # the training process runs in the project folder, where this name is a folder, not a hub id
        raise ConfigError(f"{key} = {value!r} names a folder outside the studio's home; give a folder inside it "
                          "or a hub id that is not also a folder name")
    return value  # a hub id


def confine(cfg: Config, home: Path) -> Config:
    """The config with its paths written as absolute paths inside `home`; ConfigError naming the key for one
    that is not."""
    home = Path(os.path.abspath(home))
    changes: dict = {}
    for key in LOCAL_KEYS:
        value = getattr(cfg, key)
        if value and not (key == "resume_from_checkpoint" and value == "latest"):
            changes[key] = _local(home, key, value)
    for key in SOURCE_KEYS:
        if value := getattr(cfg, key):
            changes[key] = _source(home, key, value)
    runs = home / "runs"
    out = Path(_local(home, "output_dir", cfg.output_dir))
    if not out.is_relative_to(runs) or any(part.startswith(".") for part in out.relative_to(runs).parts):
        raise ConfigError(f"output_dir = {cfg.output_dir!r}: a remote job's runs go in {runs} or a folder "
                          "inside it (not a hidden one); leave output_dir unset for runs/")
    changes["output_dir"] = str(out)
    return cfg.replace(**changes)
