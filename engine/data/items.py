"""What a data source hands the rest of the engine: Items, captions, and the errors users see."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterable

from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
CAPTION_FALLBACK_EXTENSION = ".caption"  # tried after cfg.caption_extension (kohya and others use it)


class DataError(ValueError):
    """A data problem a user can fix; the message names the file, folder or column and what to do."""


@dataclass
class Item:
    """One training image. Cheap to hold: the pixels are read only when `load()` is called."""

    key: str  # display name for messages: path relative to the data dir, or "dataset row 12"
    load: Callable[[], Image.Image]  # the raw image, as stored (use load_rgb before training on it)
    caption: str | None  # None = no caption found
    repeats: int = 1
    concept: str = ""  # kohya concept folder name ("10_sks dog"), or ""
    content_id: str = ""  # sha256 of the image bytes: caches key on it, so a renamed file stays cached
    # (width, height) as displayed (EXIF rotation applied), read from the header during discovery so
    # bucketing need not decode every image; None = unknown, read from the image when needed.
    size: tuple[int, int] | None = None


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def clean_caption(text) -> str | None:
    """Whitespace runs (newlines included) become one space; an empty caption counts as no caption.

    A list (several captions per image, as some datasets hold) gives its first non-empty entry, as the
    diffusers scripts do outside training."""
    if isinstance(text, (list, tuple)):
        text = next((t for t in text if t), None)
    if text is None:
        return None
    text = " ".join(str(text).split())
    return text or None


def _tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def build_caption(caption: str | None, trigger_word: str) -> str:
    """'trigger, caption'; just one of them when the other is empty.

    The trigger is not prepended a second time when the caption already has it as one of its tags
    (typical of kohya concept folders, whose folder text is often the trigger itself)."""
    caption = (caption or "").strip()
    trigger = (trigger_word or "").strip()
    if not trigger:
        return caption
    if not caption:
        return trigger
    if trigger.lower() in (t.lower() for t in _tags(caption)):
        return caption
    return f"{trigger}, {caption}"


def tag_frequency(items: Iterable[Item], default_name: str = "images") -> dict[str, dict[str, int]]:
    """kohya's ss_tag_frequency: {folder: {tag: images with that tag}}, tags lower-cased as kohya does.

    Counted once per image (not per repeat). Items without a kohya concept go under `default_name`."""
    freq: dict[str, dict[str, int]] = {}
    for item in items:
        folder = freq.setdefault(item.concept or default_name, {})
        for tag in _tags(item.caption or ""):
            tag = tag.lower()
            folder[tag] = folder.get(tag, 0) + 1
    return freq
