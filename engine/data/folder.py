"""Local image folders: find the layout and list (image path, caption, repeats) without opening images.

Layouts, tried in this order (the first that matches wins):
  1. imagefolder: `metadata.jsonl` or `metadata.csv` with `file_name` and the caption column;
  2. `images/` + `captions/` sub-folders, paired by file stem;
  3. kohya: `N_concept/` sub-folders (`10_sks dog/`): N repeats; the concept text captions images that
     have no caption file. Images at the top level next to them are used too, with 1 repeat;
  4. images at the top level with sidecar captions (`a.png` + `a.txt` or `a.caption`).
"""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from engine.paths import UnsafePath, relative_inside

from .items import CAPTION_FALLBACK_EXTENSION, IMAGE_EXTENSIONS, DataError, clean_caption

KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")
# A kohya folder's N: every repeat is an entry of the epoch, so "1000000000_star" would fill the memory.
# kohya's own examples use 1-100; the schema's `repeats` (which multiplies N) stops at 1000 too.
MAX_FOLDER_REPEATS = 1000
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
# Text that is read whole: bounded, so a huge file posing as captions cannot fill the memory.
MAX_CAPTION_BYTES = 64 * 1024  # CLIP reads 77 tokens; the longest LLM-encoder prompts are a few KiB
MAX_METADATA_BYTES = 256 << 20  # a 1M-image metadata.jsonl with long captions is ~200 MiB


@dataclass
class FileCandidate:
    path: Path
    key: str  # path relative to the data dir
    caption: str | None
    repeats: int = 1  # the kohya folder's N; cfg.repeats multiplies it later
    concept: str = ""


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def is_image(p: Path) -> bool:
    return p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_EXTENSIONS


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image(p))


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def read_caption_file(path: Path, warn: Callable[[str], None]) -> str | None:
    with open(path, "rb") as f:
        data = f.read(MAX_CAPTION_BYTES + 1)
    if len(data) > MAX_CAPTION_BYTES:
        warn(f"{path} is larger than {MAX_CAPTION_BYTES // 1024} KiB; only its start is used as the caption")
        # a cut may split a character: drop that partial one rather than call the file not UTF-8
        return clean_caption(data[:MAX_CAPTION_BYTES].decode("utf-8-sig", errors="ignore"))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        warn(f"{path} is not UTF-8 text; unreadable characters were replaced. Save it as UTF-8.")
        text = data.decode("utf-8", errors="replace")
    return clean_caption(text)


def _sidecar_caption(image: Path, caption_dir: Path, cfg, warn) -> str | None:
    for ext in dict.fromkeys((cfg.caption_extension, CAPTION_FALLBACK_EXTENSION)):
        candidate = caption_dir / (image.stem + ext)
        if candidate.is_file():
            return read_caption_file(candidate, warn)
    return None


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# ----------------------------------------------------------------------------- the layouts

def _metadata_rows(meta: Path) -> tuple[list[tuple[int, dict]], list[str]]:
    """(line number, row) pairs and the column names of metadata.jsonl / metadata.csv."""
    if meta.stat().st_size > MAX_METADATA_BYTES:
        raise DataError(f"{meta} is larger than {MAX_METADATA_BYTES >> 20} MiB, far more than captions need; "
                        "check that it is the right file")
    text = meta.read_text(encoding="utf-8-sig")
    if meta.suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        return [(reader.line_num, row) for row in reader], list(reader.fieldnames or [])
    rows, columns = [], {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{meta} line {n} is not valid JSON ({e.msg}); each line must be one "
                            'object like {"file_name": "a.png", "text": "a caption"}') from None
        if not isinstance(row, dict):
            raise DataError(f"{meta} line {n} is not a JSON object; write "
                            '{"file_name": "a.png", "text": "a caption"}')
        rows.append((n, row))
        columns.update(dict.fromkeys(row))
    return rows, list(columns)


def _from_metadata(root: Path, meta: Path, cfg, warn) -> list[FileCandidate]:
    rows, columns = _metadata_rows(meta)
    for needed, what in (("file_name", "the image file names"), (cfg.caption_column, "the captions")):
        if needed not in columns:
            hint = " (set caption_column to the column that holds them)" if needed == cfg.caption_column else ""
            raise DataError(f"{meta} has no column '{needed}' for {what}{hint}; its columns are: "
                            f"{', '.join(columns) or 'none'}")
    found, listed = [], set()
    for n, row in rows:
        name = str(row.get("file_name") or "")
        try:  # an absolute name or one that climbs out would read any image on the disk
            path = relative_inside(root, name, "file_name").resolve() if name else root
        except UnsafePath as e:
            raise DataError(f"{meta} line {n}: {e}") from None
        listed.add(path)
        if not name or not path.is_file():
            warn(f"skipping {name or '(empty file_name)'} listed in {meta.name}: no such file in {root}")
            continue
        found.append(FileCandidate(path, name, clean_caption(row.get(cfg.caption_column))))
    unlisted = [p for p in _images_in(root) if p.resolve() not in listed]
    if unlisted:
        warn(f"{len(unlisted)} images in {root} are not listed in {meta.name} and are not used "
             f"(e.g. {unlisted[0].name})")
    return found


def _from_images_and_captions(root: Path, cfg, warn) -> list[FileCandidate]:
    captions = root / "captions"
    return [FileCandidate(p, _rel(p, root), _sidecar_caption(p, captions, cfg, warn))
            for p in _images_in(root / "images")]


def _from_sidecars(root: Path, folder: Path, cfg, warn, repeats=1, concept="",
                   concept_text: str | None = None) -> list[FileCandidate]:
    out = []
    for p in _images_in(folder):
        caption = _sidecar_caption(p, folder, cfg, warn)
        out.append(FileCandidate(p, _rel(p, root), caption if caption is not None else concept_text,
                                 repeats, concept))
    return out


def _from_kohya(root: Path, cfg, warn) -> list[FileCandidate]:
    found = _from_sidecars(root, root, cfg, warn)
    for folder in _subfolders(root):
        match = KOHYA_FOLDER.match(folder.name)
        if not match:
            if _images_in(folder):
                warn(f"ignoring folder {folder.name}/: kohya concept folders are named N_concept "
                     "(e.g. 10_sks dog), where N is how often its images repeat")
            continue
        repeats, concept_text = int(match.group(1)), clean_caption(match.group(2))
        if repeats > MAX_FOLDER_REPEATS:
            raise DataError(f"folder {folder} asks for {repeats} repeats; at most {MAX_FOLDER_REPEATS} are "
                            f"allowed. Rename it with a smaller number, e.g. 10_{match.group(2)}")
        if repeats == 0:
            warn(f"ignoring folder {folder.name}/: 0 repeats means its images are never used")
            continue
        found += _from_sidecars(root, folder, cfg, warn, repeats, folder.name, concept_text)
    return found


def folder_candidates(root: Path, cfg, warn) -> tuple[list[FileCandidate], Path]:
    """Every image the layout names, in a stable order, and the folder to describe if there are none."""
    if not root.exists():
        raise DataError(f"train_data_dir {root} does not exist; give the folder that holds your images")
    if not root.is_dir():
        raise DataError(f"train_data_dir {root} is a file, not a folder; give the folder that holds it")
    for name in METADATA_FILES:
        if (root / name).is_file():
            return _from_metadata(root, root / name, cfg, warn), root
    if (root / "images").is_dir() and (root / "captions").is_dir():
        return _from_images_and_captions(root, cfg, warn), root / "images"
    if any(KOHYA_FOLDER.match(f.name) for f in _subfolders(root)):
        return _from_kohya(root, cfg, warn), root
    return _from_sidecars(root, root, cfg, warn), root


def describe_contents(root: Path) -> str:
    """What is in a folder that has no usable images: 'found 3 files (.md, .txt)' and any sub-folders."""
    if not root.is_dir():
        return "the folder is missing"
    files = [p for p in root.iterdir() if p.is_file() and _visible(p)]
    subfolders = _subfolders(root)
    parts = []
    if files:
        exts = Counter(p.suffix.lower() or "(no extension)" for p in files)
        parts.append(f"found {len(files)} files ({', '.join(sorted(exts))})")
    if subfolders:
        names = ", ".join(f.name + "/" for f in subfolders[:5]) + (", ..." if len(subfolders) > 5 else "")
        parts.append(f"sub-folders {names} (images in sub-folders are used only in kohya N_concept "
                     "folders such as 10_sks dog/, or in images/ + captions/)")
    return "; ".join(parts) or "the folder is empty"
