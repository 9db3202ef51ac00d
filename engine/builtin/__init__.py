"""Built-in models: "builtin:<name>" resolves to a local diffusers pipeline folder built offline.

Random-weight built-ins are built on first use into cache_root()/builtin/<name> and reused after; adding
one is a single entry in BUILTINS (short name -> function that writes a pipeline folder at a given path).
Trained built-ins (builtin:toy, builtin:toy-dit) are committed folders, listed in SHIPPED.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from engine.atomic import normal_modes, temp_dir
from engine.builtin import toy
from engine.builtin.fullsize import build_random_sd15, build_random_sdxl
from engine.builtin.random_dit import RANDOM_MARKER, build_random_flux1, build_random_sd35
from engine.builtin.tiny import build_tiny_sd, build_tiny_sdxl
from engine.builtin.tiny_dit import build_tiny_flux, build_tiny_qwenimage, build_tiny_sd3, build_tiny_zimage
from engine.paths import cache_root

BUILTIN_PREFIX = "builtin:"

BUILTINS: dict[str, Callable[[Path], None]] = {
    "tiny-sd": build_tiny_sd,
    "tiny-sdxl": build_tiny_sdxl,
    "tiny-flux": build_tiny_flux,
    "tiny-sd3": build_tiny_sd3,
    "tiny-zimage": build_tiny_zimage,
    "tiny-qwenimage": build_tiny_qwenimage,
    # full-size shapes with random weights, for benchmarks (GBs: built only when asked for)
    "random-sd15": build_random_sd15,
    "random-sdxl": build_random_sdxl,
    # full-size DiTs: configs and tokenizers only; the weights are random, made on the GPU at load (random_dit)
    "random-flux1": build_random_flux1,
    "random-sd35": build_random_sd35,
}

# Trained built-ins ship in the repository: short name -> committed pipeline folder.
SHIPPED: dict[str, Path] = {"toy": toy.SHIPPED, "toy-dit": toy.SHIPPED_DIT}
REBUILD = {"toy": "python -m engine.builtin.toy build", "toy-dit": "python -m engine.builtin.toy build-dit"}

# Bump a recipe's version when its builder changes: caches built from an older recipe are rebuilt.
RECIPE_VERSIONS: dict[str, int] = {"tiny-sd": 1, "tiny-sdxl": 1, "tiny-flux": 1, "tiny-sd3": 1, "tiny-qwenimage": 1,
                                   "random-sd15": 1, "random-sdxl": 1, "random-flux1": 1, "random-sd35": 1}
_STAMP = ".recipe"

# Only finished builds are renamed into place, so a cached folder holding this file is complete.
_MARKER = "model_index.json"


def is_builtin(name: str) -> bool:
    """True for any "builtin:..." reference (known or not), so typos get resolve_builtin's error
    listing the valid names instead of being looked up as a hub id or a path."""
    return isinstance(name, str) and name.startswith(BUILTIN_PREFIX)


def builtin_names() -> list[str]:
    return [BUILTIN_PREFIX + short for short in (*SHIPPED, *BUILTINS)]


def resolve_builtin(name: str) -> Path:
    """The pipeline folder for a built-in, building it (once, atomically) if the cache lacks it."""
    short = name[len(BUILTIN_PREFIX):] if is_builtin(name) else None
    if short in SHIPPED:
        if not (SHIPPED[short] / _MARKER).is_file():
            raise ValueError(f"{name} is missing from this checkout ({SHIPPED[short]}): restore it with git, or "
                             f"rebuild it with `{REBUILD[short]}`")
        return SHIPPED[short]
    if short not in BUILTINS:
        raise ValueError(f"unknown built-in model {name!r}; valid names: {', '.join(builtin_names())}")
    parent = cache_root() / "builtin"
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / short
    if _is_complete(final, short):
        return final
    if final.exists():
        # Incomplete, or built by an older recipe: set it aside and build anew.
        _discard(final, parent)

    # Build next to the target (same filesystem) so the rename into place is atomic.
    tmp = temp_dir(parent, f"{short}-building")
    try:
        BUILTINS[short](tmp)
        (tmp / _STAMP).write_text(_stamp(short))
        if not _is_complete(tmp, short):
            # e.g. transformers 5 writes weights only on rank 0 once torch.distributed is up
            raise RuntimeError(f"building {name} left an incomplete folder {tmp}; build it from one process")
        normal_modes(tmp)  # safetensors writes 0600 files
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished first (the target is now a non-empty folder): use theirs.
            if not _is_complete(final, short):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    return final


def _stamp(short: str) -> str:
    return f"{short} recipe v{RECIPE_VERSIONS.get(short, 1)}"


def _is_complete(folder: Path, short: str) -> bool:
    """Built by the current recipe, model_index.json present, and every model part has its weights."""
    index = folder / _MARKER
    stamp = folder / _STAMP
    if not index.is_file() or not stamp.is_file() or stamp.read_text() != _stamp(short):
        return False
    if (folder / RANDOM_MARKER).is_file():
        return True  # no weights by design
    for part in json.loads(index.read_text()):
        sub = folder / part
        if (sub / "config.json").is_file() and not any(sub.glob("*.safetensors")):
            return False
    return True


def _discard(folder: Path, parent: Path) -> None:
    """Rename a stale folder to a unique name, then delete it; tolerate a racer doing the same."""
    trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.stale-", dir=parent))
    try:
        os.rename(folder, trash / "old")
    except FileNotFoundError:
        pass
    shutil.rmtree(trash, ignore_errors=True)
