"""discover_items: from cfg.train_data_dir or cfg.dataset_name to a checked list of Items.

Every image is read here, a block at a time: to skip empty, corrupt or oversized files up front (one
warning each, naming the file) rather than crash mid-epoch, to hash its bytes into the content id that
caches key on, and to note its size from the header (for aspect-ratio buckets).
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

from PIL import Image

from .folder import describe_contents, folder_candidates
from .hf_dataset import row_candidates
from .images import displayed_size, open_image, too_large
from .items import IMAGE_EXTENSIONS, DataError, Item, content_hash

Warn = Callable[[str], None]


def open_image_file(path: Path) -> Image.Image:
    """Item.load for a file (module level and bound with partial, so DataLoader workers can pickle it)."""
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:
        raise DataError(f"could not read image {path} ({type(e).__name__}: {e})") from None
    return img


@dataclass
class ImageCheck:
    """What the up-front check found: the displayed (width, height) and the sha256 of the bytes, or why
    the image is skipped (problem "unreadable" or "too large", and the warning naming it)."""
    size: tuple[int, int] | None = None
    content_id: str = ""
    problem: str = ""
    message: str = ""


def _sha256(source: Path | bytes) -> str:
    if isinstance(source, bytes):
        return content_hash(source)
    with open(source, "rb") as f:  # streamed: a huge file never sits in memory whole
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_image(key: str, source: Path | bytes | OSError) -> ImageCheck:
    """Cheap up-front check of one image (a file, a dataset row's bytes, or the OSError that stopped
    reading them): PIL's verify() parses the structure without decoding the pixels, and images above
    MAX_IMAGE_PIXELS are refused from their header alone."""
    def skip(problem: str, why: str, content_id: str = "") -> ImageCheck:
        return ImageCheck(None, content_id, problem, f"skipping {key}: {why}")

    if isinstance(source, OSError):
        return skip("unreadable", f"could not read it ({source.strerror or source})")
    try:
        if not (len(source) if isinstance(source, bytes) else source.stat().st_size):
            return skip("unreadable", "the file is empty (0 bytes)")
        content_id = _sha256(source)
    except OSError as e:  # vanished, permissions, I/O error: reported and skipped like a corrupt file
        return skip("unreadable", f"could not read it ({e.strerror or e})")
    try:
        with open_image(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            size = displayed_size(img)  # before verify(), which leaves the file unusable
            if why := too_large(img.size):
                return skip("too large", why, content_id)
            img.verify()
    except Image.DecompressionBombError as e:
        return skip("too large", str(e), content_id)
    except Exception as e:
        return skip("unreadable", f"not a readable image ({type(e).__name__}: {e})", content_id)
    return ImageCheck(size, content_id)


# A source is (rows, nothing_found): rows yields (key, the image file, its bytes or the OSError that stopped
# reading them, loader, caption, repeats, concept); nothing_found() explains an empty source.
Source = tuple[Iterator[tuple], Callable[[], str]]


def _folder_items(cfg, warn: Warn) -> Source:
    root = Path(cfg.train_data_dir).expanduser()
    candidates, look_in = folder_candidates(root, cfg, warn)

    def rows():
        for c in candidates:
            yield c.key, c.path, partial(open_image_file, c.path), c.caption, c.repeats, c.concept

    def nothing_found() -> str:
        return (f"no images in {look_in}: {describe_contents(look_in)}; supported image types: "
                f"{', '.join(IMAGE_EXTENSIONS)}")
    return rows(), nothing_found


def _dataset_items(cfg) -> Source:
    def rows():
        for key, data, load, caption in row_candidates(cfg):
            yield key, data, load, caption, 1, ""

    def nothing_found() -> str:
        return f"dataset {cfg.dataset_name} has no rows in its 'train' split"
    return rows(), nothing_found


def _warn_missing_captions(items: list[Item], cfg, warn: Warn) -> None:
    missing = [it for it in items if it.caption is None]
    if not missing:
        return
    if cfg.trigger_word.strip():
        effect = f"they train on the trigger word '{cfg.trigger_word.strip()}' alone"
    elif cfg.dataset_name:
        effect = f"they train with an empty caption; fill the '{cfg.caption_column}' column or set trigger_word"
    else:
        stem = Path(missing[0].key).stem
        effect = (f"they train with an empty caption; add caption files (e.g. {stem}{cfg.caption_extension}) "
                  "or set trigger_word")
    warn(f"{len(missing)} of {len(items)} images have no caption (e.g. {missing[0].key}); {effect}")


def discover_items(cfg, warn: Warn, captioned: bool = True) -> list[Item]:
    """The training images of cfg's data source, checked, capped at cfg.max_train_samples.

    captioned=False: the caller captions the images itself (DreamBooth), so missing captions are no news."""
    rows, nothing_found = _dataset_items(cfg) if cfg.dataset_name else _folder_items(cfg, warn)
    items: list[Item] = []
    skipped = 0
    for key, data, load, caption, repeats, concept in rows:
        if cfg.max_train_samples is not None and len(items) >= cfg.max_train_samples:
            break  # stop reading: quick tries on big folders stay quick
        found = check_image(key, data)
        if found.size is None:
            warn(found.message)
            skipped += 1
            continue
        items.append(Item(key=key, load=load, caption=caption, repeats=repeats * cfg.repeats,
                          concept=concept, content_id=found.content_id, size=found.size))
    if not items:
        if skipped:
            source = cfg.dataset_name or cfg.train_data_dir
            raise DataError(f"no usable images in {source}: all {skipped} were skipped as unreadable "
                            "(see the warnings above); replace or remove those files")
        raise DataError(nothing_found())
    if captioned:
        _warn_missing_captions(items, cfg, warn)
    return items


def total_repeats(items: Iterable[Item]) -> int:
    """Images per epoch, repeats counted (the length of TrainDataset)."""
    return sum(item.repeats for item in items)
