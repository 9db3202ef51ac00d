"""Make a new dataset folder from uploaded images, caption files and zip archives.

Only images, caption files (engine.paths.CAPTION_EXTENSIONS) and imagefolder metadata files are
kept; everything else is skipped with a message naming it. Zip members that would land outside the new
folder (absolute paths, ..), links, and hidden or __MACOSX entries are skipped too. A zip whose members
all sit in one top folder (my-photos/...) is unpacked without that folder, unless it is a kohya
N_concept folder. The folder is assembled under a temporary name and renamed when complete, so a failed
upload leaves nothing behind and an existing folder is never touched.

An upload is bounded (UploadLimits, settable through environment variables): the bytes it unpacks to,
the files it holds and, for a zip, how far it expands. A zip is measured from its directory before
anything is extracted, and the bytes are counted again while extracting, since a header can lie.
"""
from __future__ import annotations

import os
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from engine.atomic import temp_dir
from engine.paths import CAPTION_EXTENSIONS, safe_child

from .folder import KOHYA_FOLDER, METADATA_FILES
from .items import IMAGE_EXTENSIONS, DataError

COPY_CHUNK = 1 << 20
UNREADABLE_MEMBER = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int = 2 << 30  # what one upload may unpack to, all files together (2 GiB)
    max_files: int = 20_000  # files one upload may hold, zip members included
    max_ratio: float = 100.0  # unpacked size / packed size of a zip; images barely compress

    ENV = {"max_bytes": "ADAPTOR_STUDIO_UPLOAD_MAX_BYTES", "max_files": "ADAPTOR_STUDIO_UPLOAD_MAX_FILES",
           "max_ratio": "ADAPTOR_STUDIO_UPLOAD_MAX_RATIO"}

    @classmethod
    def from_env(cls) -> "UploadLimits":
        """The defaults, each replaced by its environment variable when that is set."""
        values = {}
        for name, var in cls.ENV.items():
            text = os.environ.get(var, "").strip()
            if text:
                kind = float if name == "max_ratio" else int
                try:
                    values[name] = kind(text)
                except ValueError:
                    raise DataError(f"{var} = {text!r} is not a number") from None
                if values[name] <= 0:
                    raise DataError(f"{var} = {text!r} must be above 0")
        return cls(**values)


class _Budget:
    """What an upload has used so far, against its limits."""

    def __init__(self, limits: UploadLimits):
        self.limits, self.bytes, self.files = limits, 0, 0

    def refusal(self, what: str) -> DataError:
        lim = self.limits
        return DataError(f"{what}: an upload may unpack to at most {lim.max_bytes / 2**20:.0f} MiB in "
                         f"{lim.max_files} files ({UploadLimits.ENV['max_bytes']}, "
                         f"{UploadLimits.ENV['max_files']}); nothing was kept. Upload fewer files at a time")

    def reserve(self, nbytes: int, nfiles: int, what: str) -> None:
        if self.bytes + nbytes > self.limits.max_bytes or self.files + nfiles > self.limits.max_files:
            raise self.refusal(what)
        self.bytes += nbytes
        self.files += nfiles

    def copy(self, src, out, declared: int, what: str) -> None:
        """Copy a stream, refusing more than `declared` bytes (already reserved)."""
        written = 0
        while chunk := src.read(COPY_CHUNK):
            written += len(chunk)
            if written > declared:
                raise DataError(f"{what} holds more than the {declared} bytes its zip header declares; "
                                "the zip is damaged or forged, so nothing was kept")
            out.write(chunk)


def _entry_count(archive: Path) -> int | None:
    """Members the zip's end record declares, read before zipfile builds its whole directory in memory."""
    try:
        with open(archive, "rb") as f:
            end = zipfile._EndRecData(f)  # the stdlib's own reader of that record
    except OSError:
        return None
    return end[zipfile._ECD_ENTRIES_TOTAL] if end else None


def _check_zip_size(archive: Path, members: list[zipfile.ZipInfo], budget: _Budget) -> None:
    unpacked = sum(info.file_size for info in members)
    packed = sum(info.compress_size for info in members)
    ratio = unpacked / max(packed, 1)
    if ratio > budget.limits.max_ratio:
        raise DataError(f"{archive.name} would expand {ratio:.0f}:1 ({unpacked / 2**20:.1f} MiB from "
                        f"{packed / 2**20:.1f} MiB); at most {budget.limits.max_ratio:g}:1 is allowed "
                        f"({UploadLimits.ENV['max_ratio']}), so nothing was extracted")
    budget.reserve(unpacked, len(members), f"{archive.name} unpacks to {unpacked / 2**20:.1f} MiB in "
                   f"{len(members)} files")


@dataclass
class UploadResult:
    folder: Path
    added: list[str] = field(default_factory=list)  # paths relative to the new folder
    skipped: list[str] = field(default_factory=list)  # one message per skipped file or member


def _kept(name: str) -> bool:
    suffix = PurePosixPath(name).suffix.lower()
    return suffix in IMAGE_EXTENSIONS or suffix in CAPTION_EXTENSIONS or PurePosixPath(name).name in METADATA_FILES


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


def _extract_zip(archive: Path, dest: Path, result: UploadResult, budget: _Budget) -> None:
    entries = _entry_count(archive)
    if entries is not None and entries > budget.limits.max_files:
        raise budget.refusal(f"{archive.name} holds {entries} entries")
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
            elif not _kept(info.filename):
                result.skipped.append(f"{archive.name}: {info.filename} skipped (not an image or caption file)")
            else:
                members.append((info, parts))
        _check_zip_size(archive, [info for info, _ in members], budget)
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
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    budget.copy(src, out, info.file_size, f"{archive.name}: {info.filename}")
            except UNREADABLE_MEMBER as e:  # a bad CRC, a cut stream, encryption, an unknown compression
                raise DataError(f"{archive.name}: {info.filename} cannot be unpacked ({type(e).__name__}: {e}); "
                                "nothing was kept. Make the zip again") from None
            result.added.append(rel)


def create_dataset(datasets_dir: str | Path, name: str, files: list[str | Path],
                   limits: UploadLimits | None = None) -> UploadResult:
    """A new folder datasets_dir/name holding the uploaded images and captions (zips unpacked), within
    `limits` (default: UploadLimits.from_env())."""
    budget = _Budget(limits or UploadLimits.from_env())
    folder = new_dataset_folder(datasets_dir, name)
    if not files:
        raise DataError("no files were uploaded; add images (and their caption files) or a zip")
    tmp = temp_dir(folder.parent, f"{folder.name}-upload")  # ordinary permissions, unlike mkdtemp's 0700
    result = UploadResult(folder)
    try:
        for f in map(Path, files):
            if f.suffix.lower() == ".zip":
                _extract_zip(f, tmp, result, budget)
            elif not f.is_file() or f.is_symlink():
                result.skipped.append(f"{f.name}: skipped (not a plain file)")
            elif not _kept(f.name):
                result.skipped.append(f"{f.name}: skipped (not an image, caption or zip file)")
            elif (tmp / f.name).exists():
                result.skipped.append(f"{f.name}: skipped (a file of that name was already added)")
            else:
                budget.reserve(f.stat().st_size, 1, f"{f.name} ({f.stat().st_size / 2**20:.1f} MiB)")
                shutil.copyfile(f, safe_child(tmp, f.name))
                result.added.append(f.name)
        if not any(Path(rel).suffix.lower() in IMAGE_EXTENSIONS for rel in result.added):
            raise DataError(f"the upload holds no images ({', '.join(IMAGE_EXTENSIONS)}), so no dataset was "
                            "made" + (f"; skipped: {'; '.join(result.skipped[:5])}" if result.skipped else ""))
        tmp.rename(folder)  # refuses if the folder appeared meanwhile
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result
