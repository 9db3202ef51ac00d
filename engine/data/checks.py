"""Checks to run on a dataset folder before training: the problems as table rows, a size summary, and
how often each tag and word appears in the captions.

Unreadable and oversized files are found with the very check training uses to skip them
(sources.check_image), so the table names the files training would drop. Files are read a block at a
time: loading a folder never holds more than one image's header and a hash buffer in memory.
"""
from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .caption_files import CaptionedImage, list_images
from .folder import describe_contents
from .items import tag_frequency
from .sources import check_image

DEFAULT_MIN_SIDE = 64
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")  # letters/digits, keeping don't and close-up whole


@dataclass
class DatasetReport:
    images: list[CaptionedImage]
    problems: list[dict] = field(default_factory=list)  # {"file", "problem", "detail"}
    summary: list[dict] = field(default_factory=list)  # {"measure", "value"}
    duplicates: list[list[str]] = field(default_factory=list)  # groups of keys with identical bytes
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (width, height) as displayed


def check_dataset(folder: str | Path, caption_extension: str = ".txt",
                  min_side: int = DEFAULT_MIN_SIDE) -> DatasetReport:
    """Unreadable files, missing captions, images whose shorter side is below min_side, byte-identical
    duplicates (sha256), and a summary of sizes and aspect ratios."""
    images, warnings = list_images(folder, caption_extension)
    report = DatasetReport(images)
    add = report.problems.append
    for message in warnings:
        add({"file": "", "problem": "layout", "detail": message})
    if not images:
        add({"file": str(folder), "problem": "no images",
             "detail": f"no images training could use: {describe_contents(Path(folder))}"})
    by_hash: dict[str, list[str]] = {}
    for item in images:
        found = check_image(item.key, item.image)
        size = found.size
        if size is None:
            add({"file": item.key, "problem": found.problem, "detail": found.message})
        else:
            report.sizes[item.key] = size
            if min(size) < min_side:
                add({"file": item.key, "problem": "tiny image",
                     "detail": f"{size[0]}x{size[1]} px: the shorter side is below the {min_side} px threshold"})
        if found.content_id:
            by_hash.setdefault(found.content_id, []).append(item.key)
        if item.training_caption is None:
            where = item.caption_path.name if item.caption_path else "a caption in the metadata file"
            add({"file": item.key, "problem": "missing caption",
                 "detail": f"no caption ({where} is missing or empty); it trains with an empty caption "
                           "plus the trigger word"})
    report.duplicates = [keys for keys in by_hash.values() if len(keys) > 1]
    for keys in report.duplicates:
        add({"file": keys[0], "problem": "duplicate",
             "detail": f"{len(keys)} files have identical bytes (sha256): {', '.join(keys)}"})
    report.summary = size_summary(list(report.sizes.values()), len(images))
    return report


def _aspect_name(w: int, h: int) -> str:
    ratio = w / h
    shape = "square" if abs(ratio - 1) < 0.02 else "landscape" if ratio > 1 else "portrait"
    return f"{ratio:.2f} ({shape})"


def size_summary(sizes: list[tuple[int, int]], count: int | None = None) -> list[dict]:
    """Count, min/max/median width and height, and how many images have each aspect ratio (w/h)."""
    rows = [{"measure": "images", "value": str(len(sizes) if count is None else count)}]
    if count is not None and count != len(sizes):
        rows.append({"measure": "readable images", "value": str(len(sizes))})
    if not sizes:
        return rows
    for axis, name in ((0, "width"), (1, "height")):
        values = [s[axis] for s in sizes]
        rows.append({"measure": f"{name} (px)", "value": f"min {min(values)}, median "
                     f"{statistics.median(values):g}, max {max(values)}"})
    ratios = Counter(_aspect_name(w, h) for w, h in sizes)
    rows.append({"measure": "aspect ratios (w/h)",
                 "value": ", ".join(f"{name}: {n}" for name, n in sorted(ratios.items(), key=lambda kv: -kv[1]))})
    return rows


def caption_frequency(images: list[CaptionedImage]) -> list[dict]:
    """Rows {"kind": "tag" | "word", "text", "images"}: how many images' captions hold each comma-separated
    tag (lower-cased, as kohya's ss_tag_frequency counts them) and each word; most frequent first."""
    tags = Counter()
    # tag_frequency reads an Item's caption and concept; give it the caption training sees
    as_items = (_AsItem(item.training_caption, item.concept) for item in images)
    for folder_counts in tag_frequency(as_items).values():
        tags.update(folder_counts)
    words = Counter()
    for item in images:
        words.update(set(m.group(0).lower() for m in _WORD.finditer(item.training_caption or "")))
    rows = [{"kind": "tag", "text": t, "images": n} for t, n in tags.items()]
    rows += [{"kind": "word", "text": w, "images": n} for w, n in words.items()]
    return sorted(rows, key=lambda r: (r["kind"] != "tag", -r["images"], r["text"]))


@dataclass
class _AsItem:
    caption: str | None
    concept: str

