"""Where the project keeps things it builds or caches (built-in models, latent caches)."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    """ADAPTOR_STUDIO_CACHE, else .cache/ in the project folder (kept out of git)."""
    root = Path(os.environ.get("ADAPTOR_STUDIO_CACHE") or PROJECT_ROOT / ".cache")
    root.mkdir(parents=True, exist_ok=True)
    return root


def safe_child(parent: str | os.PathLike, name: str) -> Path:
    """parent/name, refusing names that would escape parent (.., absolute paths, separators)."""
    parent_p = Path(parent).resolve()
    child = (parent_p / name).resolve()
    if name in ("", ".", "..") or child.parent != parent_p:
        raise ValueError(f"{name!r} is not a plain name inside {parent}")
    return child


def studio_home() -> Path:
    """Where the studio keeps user data: ADAPTOR_STUDIO_HOME, else the project folder. Under it: runs/ (run
    folders and the job queue), datasets/ (uploads), presets/user/ (saved presets)."""
    return Path(os.environ.get("ADAPTOR_STUDIO_HOME") or PROJECT_ROOT).resolve()


def runs_dir() -> Path:
    return studio_home() / "runs"


def datasets_dir() -> Path:
    return studio_home() / "datasets"


def user_presets_dir() -> Path:
    return studio_home() / "presets" / "user"


def shipped_presets_dir() -> Path:
    return PROJECT_ROOT / "presets"
