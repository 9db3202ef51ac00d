"""Small copies of dataset images for a gallery, cached by path, size and modification time.

A web page may only be served files from places the app allows; thumbnails in one cache folder (the
Dataset tab uses the system temp folder) let it show images from any folder the user types, and keep
the page light when the originals are large.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

from engine.config import atomic_write_bytes

from .images import load_rgb, open_image, too_large

THUMBNAIL_SIDE = 256


def thumbnail(image: Path, cache_dir: Path, side: int = THUMBNAIL_SIDE) -> Path | None:
    """A PNG no larger than side x side showing `image` as training sees it (EXIF rotation, alpha over
    white); None when the image cannot be read or is above MAX_IMAGE_PIXELS."""
    try:
        st = image.stat()
    except OSError:
        return None
    key = hashlib.sha256(f"{image.resolve()}|{st.st_size}|{st.st_mtime_ns}|{side}".encode()).hexdigest()[:32]
    out = cache_dir / f"{key}.png"
    if out.is_file():
        return out
    try:
        with open_image(image) as img:
            if too_large(img.size):  # never decoded: the checks table names it
                return None
            img.draft("RGB", (side, side))  # JPEG decodes at a fraction of full size
            small = load_rgb(img)
            small.thumbnail((side, side))
            small.load()  # decode now: the file closes with the block (a truncated image fails here)
    except Exception:
        return None
    buffer = io.BytesIO()
    small.save(buffer, "PNG")
    atomic_write_bytes(out, buffer.getvalue())
    return out


def placeholder(cache_dir: Path, side: int = 64) -> Path:
    """A grey square shown in place of an image that cannot be read."""
    out = cache_dir / f"unreadable-{side}.png"
    if not out.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (side, side), (128, 128, 128)).save(out)
    return out
