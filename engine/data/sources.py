"""discover_items: from cfg.train_data_dir or cfg.dataset_name to a checked list of Items.

Every image is read once here: to skip empty or corrupt files up front (one warning each, naming the
file) rather than crash mid-epoch, to hash its bytes into the content id that caches key on, and to note
its size from the header (for aspect-ratio buckets).
"""
from __future__ import annotations

import io
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

from PIL import Image

from .folder import describe_contents, folder_candidates
from .hf_dataset import row_candidates
from .images import displayed_size
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


def _readable_size(key: str, data: bytes | OSError, warn: Warn) -> tuple[int, int] | None:
    """Cheap up-front check; PIL's verify() parses the structure without decoding all the pixels.

    Returns the displayed (width, height), which bucketing needs, or None for an unusable image."""
    if isinstance(data, OSError):
        warn(f"skipping {key}: could not read it ({data.strerror or data})")
        return None
    if not data:
        warn(f"skipping {key}: the file is empty (0 bytes)")
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = displayed_size(img)  # before verify(), which leaves the file unusable
            img.verify()
    except Exception as e:
        warn(f"skipping {key}: not a readable image ({type(e).__name__}: {e})")
        return None
    return size


def _read_file(path: Path) -> bytes | OSError:
    try:
        return path.read_bytes()
    except OSError as e:  # vanished, permissions, I/O error: reported and skipped like a corrupt file
        return e


# A source is (rows, nothing_found): rows yields (key, image bytes or the OSError that stopped reading
# them, loader, caption, repeats, concept); nothing_found() explains an empty source.
Source = tuple[Iterator[tuple], Callable[[], str]]


def _folder_items(cfg, warn: Warn) -> Source:
    root = Path(cfg.train_data_dir).expanduser()
    candidates, look_in = folder_candidates(root, cfg, warn)

    def rows():
        for c in candidates:
            yield c.key, _read_file(c.path), partial(open_image_file, c.path), c.caption, c.repeats, c.concept

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
        size = _readable_size(key, data, warn)
        if size is None:
            skipped += 1
            continue
        items.append(Item(key=key, load=load, caption=caption, repeats=repeats * cfg.repeats,
                          concept=concept, content_id=content_hash(data), size=size))
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
