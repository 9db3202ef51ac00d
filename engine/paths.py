"""Where the project keeps things it builds or caches (built-in models, latent caches), and the checks that
keep a name, an extension or a relative path given from outside (the studio's HTTP API, a metadata file)
inside the folder it belongs to. Each raises UnsafePath (a ValueError) with a message naming the value."""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def cache_root() -> Path:
    """ADAPTOR_STUDIO_CACHE, else .cache/ in the project folder (kept out of git)."""
    root = Path(os.environ.get("ADAPTOR_STUDIO_CACHE") or PROJECT_ROOT / ".cache")
    root.mkdir(parents=True, exist_ok=True)
    return root


# The caption files the studio and training read and write: "<image stem><extension>" next to the image.
# A fixed set, so a caption can never be written over an image, a metadata file or anything else.
CAPTION_EXTENSIONS = (".txt", ".caption", ".tags")


class UnsafePath(ValueError):
    """A name, extension or path that would leave its folder (or is not one of the allowed kinds)."""


def safe_child(parent: str | os.PathLike, name: str) -> Path:
    """parent/name, refusing names that would escape parent (.., absolute paths, separators)."""
    parent_p = Path(parent).resolve()
    child = (parent_p / name).resolve()
    if name in ("", ".", "..") or "\0" in name or child.parent != parent_p:
        raise UnsafePath(f"{name!r} is not a plain name inside {parent}")
    return child


def inside(root: str | os.PathLike, path: str | os.PathLike, what: str = "path") -> Path:
    """root/path (or path, when absolute) with its `..` collapsed, refusing it unless it lies inside root.
    Links are not resolved: a link the user made inside root (runs/ on a bigger disk, say) stays usable,
    and no one else can make one through the studio."""
    root_abs = Path(os.path.abspath(root))
    text = os.fspath(path)
    if "\0" in text:
        raise UnsafePath(f"{what} {text!r} holds a NUL character")
    full = Path(os.path.abspath(root_abs / text))
    if not full.is_relative_to(root_abs):
        raise UnsafePath(f"{what} {text!r} is outside {root_abs}; it must lie inside that folder")
    return full


def relative_inside(root: str | os.PathLike, rel: str, what: str = "path") -> Path:
    """inside() for a path written in a file (a metadata file's file_name): an absolute one is refused
    too, whatever it points at, and so is a Windows drive path."""
    text = str(rel).replace("\\", "/")
    if PurePosixPath(text).is_absolute() or text.split("/")[0].endswith(":"):
        raise UnsafePath(f"{what} {rel!r} is an absolute path; give a path relative to {root}")
    return inside(root, text, what)


def caption_extension(value: str | None) -> str:
    """The caption extension as files are named ("txt" gains its dot, blank is ".txt"), refusing anything
    but CAPTION_EXTENSIONS (in any letter case)."""
    ext = (value or "").strip() or CAPTION_EXTENSIONS[0]
    ext = ext if ext.startswith(".") else "." + ext
    if ext.lower() not in CAPTION_EXTENSIONS:
        raise UnsafePath(f"caption extension {value!r} is not one of {', '.join(CAPTION_EXTENSIONS)}; "
                         "caption files are named after their image with one of these (a.png + a.txt)")
    return ext


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
