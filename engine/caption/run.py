"""Caption a dataset folder: pick the images the mode asks for, back up their caption files, caption them
in batches and write each caption as soon as its batch is done.

Each caption file is written atomically the moment it is ready, so a cancel (or a kill) between batches
keeps every caption already written and never leaves a half-written file. The backup is taken before the
first write and covers every file the run may touch, so one Undo (caption_files.undo_bulk) puts the
folder back as it was, whether the run finished or not.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine.config import atomic_write_bytes
from engine.data import caption_files
from engine.data.images import load_rgb
from engine.data.items import DataError, build_caption, clean_caption
from engine.data.sources import open_image_file

from . import load_captioner
from .base import model_source
from .options import CaptionError, CaptionOptions, check

Emit = Callable[..., None]  # emit(type, **fields): start, loading, loaded, caption, skipped, cancelled, done
PREVIEW_IMAGES = 4


@dataclass
class Outcome:
    written: list[str] = field(default_factory=list)  # caption files written, relative to the folder
    captions: list[dict] = field(default_factory=list)  # {"image", "file", "before", "after"}
    skipped: list[str] = field(default_factory=list)  # "image: why"
    cancelled: bool = False
    backup: Path | None = None
    report: list[str] = field(default_factory=list)


def combine(mode: str, before: str | None, generated: str, trigger: str) -> str:
    """The caption to write: the generated one (overwrite, skip), or the old one with the new tags that it
    does not already hold (append); the trigger word first, never twice."""
    generated = clean_caption(generated) or ""
    if mode == "append" and before:
        have = {t.strip().lower() for t in before.split(",")}
        new = [t.strip() for t in generated.split(",") if t.strip() and t.strip().lower() not in have]
        generated = ", ".join([before] + new)
    return build_caption(generated, trigger)


def targets(folder: Path, o: CaptionOptions) -> tuple[list[caption_files.CaptionedImage], list[str]]:
    """The images to caption, and the keys that skip mode leaves alone because they have a caption."""
    try:
        images, _ = caption_files.list_images(folder, o.caption_extension)
    except DataError as e:
        raise CaptionError(str(e)) from None
    if not images:
        raise CaptionError(f"{folder} holds no images to caption (png, jpg, webp, ...)")
    if images[0].caption_path is None:
        raise CaptionError(f"the captions of {folder} live in a metadata file (metadata.jsonl/csv); "
                           "auto-captioning writes sidecar files such as a.txt next to a.png, so move the "
                           "images to a folder without a metadata file")
    if o.mode == "skip":
        return [i for i in images if i.caption is None], [i.key for i in images if i.caption is not None]
    return images, []


def _open(item) -> tuple[object | None, str]:
    try:
        return load_rgb(open_image_file(item.image)), ""
    except (DataError, OSError, ValueError) as e:
        return None, str(e)


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def caption_folder(folder: str | Path, o: CaptionOptions, emit: Emit | None = None,
                   should_stop: Callable[[], bool] = lambda: False, preview: int | None = None) -> Outcome:
    """Caption the folder (preview=N: only the first N images, nothing written, no backup)."""
    emit = emit or (lambda *_a, **_k: None)
    check(o)
    root = Path(folder).expanduser().resolve()
    todo, kept = targets(root, o)
    if preview is not None:
        todo = todo[:max(preview, 1)]
    out = Outcome()
    writing = preview is None
    source = model_source(o.model_id) if todo else ""  # offline and not cached: fails now, before any backup
    if writing and todo:
        out.backup = caption_files.write_backup(
            root, [i.caption_path for i in todo],
            f"auto-caption with {o.captioner} ({o.model_id}, mode {o.mode})")
    emit("start", folder=str(root), total=len(todo), kept=len(kept), captioner=o.captioner, model=o.model_id,
         mode=o.mode, backup=str(out.backup) if out.backup else None, preview=not writing)
    if not todo:
        emit("done", written=0, skipped=0, report=[], backup=None)
        return out
    t0 = time.monotonic()
    emit("loading", model=o.model_id, source=source)  # its own phase: a download may take minutes
    captioner = load_captioner(o)
    emit("loaded", seconds=round(time.monotonic() - t0, 2))
    done = 0
    try:
        for batch in _batches(todo, o.batch_size):
            if should_stop():
                out.cancelled = True
                break
            opened = []
            for item in batch:
                image, why = _open(item)
                if image is None:
                    done += 1
                    out.skipped.append(f"{item.key}: {why}")
                    emit("skipped", image=item.key, reason=why, done=done, total=len(todo))
                else:
                    opened.append((item, image))
            generated = captioner.caption([image for _, image in opened]) if opened else []
            for (item, _), text in zip(opened, generated):
                done += 1
                before = item.caption if item.caption is not None else item.training_caption
                after = combine(o.mode, before, text, o.trigger)
                rel = item.caption_path.relative_to(root).as_posix()
                if writing:
                    atomic_write_bytes(item.caption_path, after.encode("utf-8"))
                    out.written.append(rel)
                out.captions.append({"image": item.key, "file": rel, "before": before, "after": after})
                emit("caption", image=item.key, file=rel, before=before, caption=after, done=done, total=len(todo))
        out.report = captioner.report()
    finally:
        captioner.close()
    if out.cancelled:
        emit("cancelled", written=len(out.written), total=len(todo),
             backup=str(out.backup) if out.backup else None)
    else:
        emit("done", written=len(out.written), skipped=len(out.skipped), report=out.report,
             backup=str(out.backup) if out.backup else None, seconds=round(time.monotonic() - t0, 2))
    return out
