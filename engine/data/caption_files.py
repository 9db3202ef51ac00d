"""Sidecar caption files as the Dataset tab edits them: list, save one, bulk-change many with undo.

Images are listed the way training finds them (folder.folder_candidates: kohya N_concept/ folders,
images/ + captions/, plain sidecars), so what the tab shows is what training reads. A bulk change
backs up every caption file it is about to touch under DATASET/.caption_backups/<time>/ (training skips
dot-folders) and notes the caption files it creates; undo_bulk restores the newest backup byte for
byte, deletes the files that change created, and removes the backup.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from engine.config import atomic_write_bytes, validate

from .folder import METADATA_FILES, folder_candidates
from .items import CAPTION_FALLBACK_EXTENSION, DataError, build_caption, clean_caption

BACKUP_DIR = ".caption_backups"
MANIFEST = "manifest.json"
BULK_OPS = ("add trigger word", "add prefix", "add suffix", "find and replace", "remove tag")


@dataclass
class CaptionedImage:
    image: Path
    key: str  # image path relative to the dataset folder
    caption_path: Path | None  # the sidecar that holds (or would hold) its caption; None: metadata file
    caption: str | None  # the sidecar's text, whitespace cleaned; None = no sidecar, or an empty one
    training_caption: str | None  # what training reads (a kohya folder's text when there is no sidecar)
    concept: str = ""  # kohya concept folder, or "" (named as items.tag_frequency expects)


@dataclass
class CaptionChange:
    file: str  # caption file relative to the dataset folder
    before: str | None
    after: str


def _config(folder: Path, caption_extension: str):
    return validate({"train_data_dir": str(folder), "caption_extension": caption_extension or ".txt"})


def list_images(folder: str | Path, caption_extension: str = ".txt") -> tuple[list[CaptionedImage], list[str]]:
    """Every image training would use from `folder`, with its caption file; and the layout's warnings."""
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root} is {'a file' if root.exists() else 'missing'}; give the folder that holds "
                        "your images")
    cfg = _config(root, caption_extension)
    warnings: list[str] = []
    candidates, look_in = folder_candidates(root, cfg, warnings.append)
    in_metadata = any((root / name).is_file() for name in METADATA_FILES)
    separate_captions = look_in == root / "images"  # the images/ + captions/ layout
    out = []
    for c in candidates:
        caption_path, caption = None, None
        if not in_metadata:
            caption_dir = root / "captions" if separate_captions else c.path.parent
            caption_path = sidecar_path(c.path, caption_dir, cfg.caption_extension)
            # folder_candidates read this same file (same order of extensions) when it exists
            caption = c.caption if caption_path.is_file() else None
        out.append(CaptionedImage(c.path, c.key, caption_path, caption, c.caption, c.concept))
    return out, warnings


def sidecar_path(image: Path, caption_dir: Path, caption_extension: str) -> Path:
    """The caption file training reads for `image` (caption_extension first, then .caption), or the
    caption_extension file to create when neither exists."""
    for ext in dict.fromkeys((caption_extension, CAPTION_FALLBACK_EXTENSION)):
        candidate = caption_dir / (image.stem + ext)
        if candidate.is_file():
            return candidate
    return caption_dir / (image.stem + caption_extension)


def _editable(item: CaptionedImage, folder: Path) -> Path:
    if item.caption_path is None:
        names = " or ".join(METADATA_FILES)
        raise DataError(f"the captions of {folder} live in its {names}; edit that file (the Dataset tab "
                        "edits sidecar caption files such as a.txt next to a.png)")
    return item.caption_path


def find_image(folder: str | Path, key: str, caption_extension: str = ".txt") -> CaptionedImage:
    images, _ = list_images(folder, caption_extension)
    for item in images:
        if item.key == key:
            return item
    raise DataError(f"{key} is not one of the images in {folder}; load the folder again")


class CaptionChanged(DataError):
    """The caption file is not what the editor opened: someone (a bulk change, auto-caption, another program)
    wrote it since."""


def caption_stamp(path: Path | None) -> str:
    """What a caption file holds now, in short: compared at save time with what the editor opened."""
    if path is None or not path.is_file():
        return "absent"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def save_caption(folder: str | Path, key: str, text: str, caption_extension: str = ".txt",
                 expect: str | None = None) -> Path:
    """Write one image's caption to its sidecar file (atomically); returns the file written. With `expect`
    (a caption_stamp taken when it was opened), a file changed since raises CaptionChanged and is kept."""
    item = find_image(folder, key, caption_extension)
    path = _editable(item, Path(folder))
    if expect is not None and caption_stamp(path) != expect:
        raise CaptionChanged(f"{path.name} changed on disk since it was opened")
    atomic_write_bytes(path, text.strip().encode("utf-8"))
    return path


# ----------------------------------------------------------------------------- bulk changes

def transform_caption(op: str, caption: str | None, text: str, replacement: str = "") -> str | None:
    """The caption after one bulk operation; None where the operation leaves no caption."""
    text = text or ""
    if op != "find and replace":
        text = " ".join(text.split())
    if not text:
        raise DataError(f"'{op}' needs some text: give the word, tag or phrase to use")
    if op == "add trigger word":
        return build_caption(caption, text)  # "trigger, caption" as training builds it, never twice
    if op == "add prefix":
        return caption if caption and caption.startswith(text) else clean_caption(f"{text} {caption or ''}")
    if op == "add suffix":  # ", 4k" joins as "caption, 4k"
        sep = "" if text[0] in ",.;:" else " "
        return caption if caption and caption.endswith(text) else clean_caption(f"{caption or ''}{sep}{text}")
    if caption is None:
        return None
    if op == "find and replace":
        return clean_caption(caption.replace(text, replacement or ""))
    if op == "remove tag":
        tags = [" ".join(t.split()) for t in caption.split(",")]
        if text not in tags:
            return caption
        return ", ".join(t for t in tags if t and t != text) or None
    raise DataError(f"unknown bulk operation {op!r}; choose one of: {', '.join(BULK_OPS)}")


def _planned(folder: Path, op: str, text: str, replacement: str,
             caption_extension: str) -> list[tuple[Path, CaptionChange]]:
    images, _ = list_images(folder, caption_extension)
    if op not in BULK_OPS:
        raise DataError(f"unknown bulk operation {op!r}; choose one of: {', '.join(BULK_OPS)}")
    plan = []
    for item in images:
        path = _editable(item, folder)
        before = item.caption if item.caption is not None else item.training_caption
        after = transform_caption(op, before, text, replacement)
        if after is not None and after != before:
            plan.append((path, CaptionChange(path.relative_to(folder).as_posix(), before, after)))
    return plan


def preview_bulk(folder: str | Path, op: str, text: str, replacement: str = "",
                 caption_extension: str = ".txt") -> list[CaptionChange]:
    """The caption files a bulk operation would change, with their text before and after."""
    return [change for _, change in _planned(Path(folder).resolve(), op, text, replacement, caption_extension)]


def apply_bulk(folder: str | Path, op: str, text: str, replacement: str = "",
               caption_extension: str = ".txt") -> tuple[list[CaptionChange], Path | None]:
    """Back up the caption files a bulk operation changes, then write them; returns the changes and the
    backup folder (None when nothing changes)."""
    root = Path(folder).resolve()
    plan = _planned(root, op, text, replacement, caption_extension)
    if not plan:
        return [], None
    backup = write_backup(root, [path for path, _ in plan], f"{op}: {text!r}" +
                           (f" -> {replacement!r}" if op == "find and replace" else ""))
    for path, change in plan:
        atomic_write_bytes(path, change.after.encode("utf-8"))
    return [change for _, change in plan], backup


def write_backup(root: Path, paths: list[Path], what: str) -> Path:
    """Copies of the files that exist and a note of those that do not; built under a temporary name and
    renamed, so an interrupted backup is never taken for a complete one."""
    backups = root / BACKUP_DIR
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    final, tmp = backups / stamp, backups / f".{stamp}.tmp"
    created, saved = [], []
    for path in paths:
        rel = path.relative_to(root).as_posix()
        if path.is_file():
            atomic_write_bytes(tmp / "files" / rel, path.read_bytes())
            saved.append(rel)
        else:
            created.append(rel)
    manifest = {"operation": what, "time": stamp, "backed_up": saved, "created": created}
    atomic_write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=1).encode("utf-8"))
    tmp.rename(final)
    return final


def latest_backup(folder: str | Path) -> Path | None:
    backups = Path(folder).resolve() / BACKUP_DIR
    if not backups.is_dir():
        return None
    done = sorted(p for p in backups.iterdir() if not p.name.startswith(".") and (p / MANIFEST).is_file())
    return done[-1] if done else None


def _inside(root: Path, rel: str, backup: Path) -> Path:
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise DataError(f"{backup / MANIFEST} names {rel!r}, which is outside {root}; not restoring it")
    return path


def undo_bulk(folder: str | Path) -> tuple[list[str], list[str], str]:
    """Undo the newest bulk change: restore the backed-up files, delete the ones it created, drop the
    backup. Returns (restored, removed, what the change was)."""
    root = Path(folder).resolve()
    backup = latest_backup(root)
    if backup is None:
        raise DataError(f"there is no bulk caption change to undo in {root} (no backups in {BACKUP_DIR}/)")
    manifest = json.loads((backup / MANIFEST).read_text(encoding="utf-8"))
    for rel in manifest["backed_up"]:
        atomic_write_bytes(_inside(root, rel, backup), (backup / "files" / rel).read_bytes())
    for rel in manifest["created"]:
        _inside(root, rel, backup).unlink(missing_ok=True)
    shutil.rmtree(backup)
    return manifest["backed_up"], manifest["created"], manifest["operation"]
