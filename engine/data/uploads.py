"""Make a new dataset folder from uploaded images, caption files and zip archives.

Only images, caption files (the caption extension, .txt, .caption) and imagefolder metadata files are
kept; everything else is skipped with a message naming it. Zip members that would land outside the new
folder (absolute paths, ..), links, and hidden or __MACOSX entries are skipped too. A zip whose members
all sit in one top folder (my-photos/...) is unpacked without that folder, unless it is a kohya
N_concept folder. The folder is assembled under a temporary name and renamed when complete, so a failed
upload leaves nothing behind and an existing folder is never touched.
"""
from __future__ import annotations

import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from engine.paths import safe_child

from .folder import KOHYA_FOLDER, METADATA_FILES
from .items import CAPTION_FALLBACK_EXTENSION, IMAGE_EXTENSIONS, DataError

CAPTION_EXTENSIONS = (".txt", CAPTION_FALLBACK_EXTENSION)


@dataclass
class UploadResult:
    folder: Path
    added: list[str] = field(default_factory=list)  # paths relative to the new folder
    skipped: list[str] = field(default_factory=list)  # one message per skipped file or member


def _kept(name: str, caption_extension: str) -> bool:
    suffix = PurePosixPath(name).suffix.lower()
    return (suffix in IMAGE_EXTENSIONS or suffix in CAPTION_EXTENSIONS or suffix == caption_extension.lower()
            or PurePosixPath(name).name in METADATA_FILES)


def new_dataset_folder(datasets_dir: str | Path, name: str) -> Path:
    """datasets_dir/name for a new dataset, refusing unsafe names and folders that exist."""
    name = (name or "").strip()
    if not name:
        raise DataError("give the new dataset a folder name, e.g. my-dog")
    if name.startswith("."):
        raise DataError(f"dataset name {name!r} starts with a dot (a hidden folder); choose another name")
    try:
        folder = safe_child(datasets_dir, name)
    except ValueError:
        raise DataError(f"dataset name {name!r} must be a plain folder name (no slashes or ..), e.g. "
                        "my-dog") from None
    if folder.exists():
        raise DataError(f"{folder} already exists; choose another name (uploads never add to or overwrite "
                        "an existing folder)")
    return folder


def _member_parts(info: zipfile.ZipInfo) -> tuple[str, ...] | str:
    """The member's path parts, or why it is skipped."""
    if stat.S_ISLNK(info.external_attr >> 16):
        return "it is a link"
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and path.parts[0].endswith(":")):
        return "its path is absolute"
    if ".." in path.parts:
        return "its path leaves the folder (..)"
    if any(p.startswith(".") or p == "__MACOSX" for p in path.parts):
        return "it is hidden or macOS metadata"
    return path.parts


def _extract_zip(archive: Path, dest: Path, caption_extension: str, result: UploadResult) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        result.skipped.append(f"{archive.name}: not a readable zip file")
        return
    with zf:
        members = []
        for info in zf.infolist():
            if info.is_dir():
                continue
            parts = _member_parts(info)
            if isinstance(parts, str):
                result.skipped.append(f"{archive.name}: {info.filename} skipped ({parts})")
            elif not _kept(info.filename, caption_extension):
                result.skipped.append(f"{archive.name}: {info.filename} skipped (not an image or caption file)")
            else:
                members.append((info, parts))
        tops = {parts[0] for _, parts in members}
        strip = (len(tops) == 1 and all(len(parts) > 1 for _, parts in members)
                 and not KOHYA_FOLDER.match(next(iter(tops))))
        for info, parts in members:
            parts = parts[1:] if strip else parts
            target = dest
            for part in parts:
                target = safe_child(target, part)  # belt and braces after the checks above
            rel = target.relative_to(dest).as_posix()
            if target.exists():
                result.skipped.append(f"{archive.name}: {info.filename} skipped ({rel} was already added)")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            result.added.append(rel)


def create_dataset(datasets_dir: str | Path, name: str, files: list[str | Path],
                   caption_extension: str = ".txt") -> UploadResult:
    """A new folder datasets_dir/name holding the uploaded images and captions (zips unpacked)."""
    folder = new_dataset_folder(datasets_dir, name)
    if not files:
        raise DataError("no files were uploaded; add images (and their caption files) or a zip")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".upload", dir=folder.parent))
    result = UploadResult(folder)
    try:
        for f in map(Path, files):
            if f.suffix.lower() == ".zip":
                _extract_zip(f, tmp, caption_extension, result)
            elif not f.is_file() or f.is_symlink():
                result.skipped.append(f"{f.name}: skipped (not a plain file)")
            elif not _kept(f.name, caption_extension):
                result.skipped.append(f"{f.name}: skipped (not an image, caption or zip file)")
            elif (tmp / f.name).exists():
                result.skipped.append(f"{f.name}: skipped (a file of that name was already added)")
            else:
                shutil.copyfile(f, safe_child(tmp, f.name))
                result.added.append(f.name)
        if not any(Path(rel).suffix.lower() in IMAGE_EXTENSIONS for rel in result.added):
            raise DataError(f"the upload holds no images ({', '.join(IMAGE_EXTENSIONS)}), so no dataset was "
                            "made" + (f"; skipped: {'; '.join(result.skipped[:5])}" if result.skipped else ""))
        tmp.rename(folder)  # refuses if the folder appeared meanwhile
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
