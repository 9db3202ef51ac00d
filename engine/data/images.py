"""Pixels: any stored image to 8-bit RGB, and the resize / flip / crop that training uses.

The transform follows the diffusers SDXL script: resize so the image covers the target (for a square
target: shorter side to the resolution), optional horizontal flip, then crop to the target; the crop
offset is measured in the flipped, resized image, since that is what SDXL's time ids describe. Targets
are squares, or (width, height) buckets with aspect-ratio bucketing.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

RESAMPLING = {
    "lanczos": Image.Resampling.LANCZOS,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
# Images above this many pixels are skipped with a warning naming them, before any pixel is decoded.
# 120 MP is above the largest camera sensors in use (~102 MP medium format) and 7x the largest training
# size people use (4096 x 4096 = 16.8 MP); one such image decodes to at most 360 MB of RGB. Pillow's own
# guard is set from it too: it warns above the limit and refuses twice the limit in any other reader.
MAX_IMAGE_PIXELS = 120_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def too_large(size: tuple[int, int]) -> str | None:
    """Why an image of (width, height) is skipped, or None when it is within MAX_IMAGE_PIXELS."""
    w, h = size
    if w * h <= MAX_IMAGE_PIXELS:
        return None
    return (f"{w}x{h} px is {w * h / 1e6:.0f} megapixels, above the limit of {MAX_IMAGE_PIXELS / 1e6:.0f} "
            "(engine.data.images.MAX_IMAGE_PIXELS); downscale it, e.g. to 4096 px on the longer side")


def open_image(source) -> Image.Image:
    """Image.open (lazy: the header only) without Pillow's DecompressionBombWarning; callers check
    too_large(img.size) before decoding, and name the image in their own warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(source)


_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _high_depth_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit gray to 8-bit by scaling, not clipping (Pillow's convert("L") clips 65535 to 255
    but also maps 300 to 255, crushing every 16-bit image to white)."""
    a = np.asarray(img).astype(np.float64)
    if img.mode.startswith("I;16"):
        a = a / 257.0  # 65535 -> 255
    else:  # "I" and "F" carry no declared range: guess it from the values
        peak = float(np.nanmax(a)) if a.size else 0.0
        if img.mode == "F" and peak <= 1.0:
            a = a * 255.0  # float images in [0, 1]
        elif peak > 255.0:
            a = a / 257.0  # 16-bit data held in 32 bits (how Pillow used to open 16-bit PNGs)
    a = np.nan_to_num(a, nan=0.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def load_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB the way a viewer shows it: EXIF rotation applied, transparency over white."""
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not cost the image
        pass
    if img.mode in _HIGH_DEPTH_MODES:
        img = _high_depth_to_l(img)
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


ORIENTATION_TAG = 0x0112
_SWAPS_SIDES = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90 degrees


def displayed_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as load_rgb will return it, without decoding the pixels where the format allows.

    PNG's getexif() decodes the whole image to look for an eXIf chunk after the pixel data; such late
    chunks are rare, so a PNG whose header (or, once loaded, whose file) has none counts as unrotated."""
    w, h = img.size
    if img.format == "PNG" and "exif" not in img.info:
        return w, h
    try:
        orientation = img.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # load_rgb ignores a broken EXIF block too
        orientation = 1
    return (h, w) if orientation in _SWAPS_SIDES else (w, h)


def as_target(target: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) of a training target: a side (square) or a (width, height) bucket."""
    return (target, target) if isinstance(target, int) else (int(target[0]), int(target[1]))


@dataclass
class Prepared:
    pixels: torch.Tensor  # float32 [3, H, W] in [-1, 1], (W, H) the target
    original_size: tuple[int, int]  # (h, w) of the loaded image
    crop_top_left: tuple[int, int]  # (top, left) in the flipped, resized image


def resize_to_cover(img: Image.Image, target: tuple[int, int], interpolation: str) -> Image.Image:
    """Smallest resize that covers target (width, height); a square target means shorter side to it."""
    (w, h), (tw, th) = img.size, target
    scale = max(tw / w, th / h)
    # max() guards against rounding a side below the crop size.
    size = (max(tw, round(w * scale)), max(th, round(h * scale)))
    return img if size == img.size else img.resize(size, RESAMPLING[interpolation])


def crop_offset(size: tuple[int, int], target: tuple[int, int], center: bool) -> tuple[int, int]:
    """(top, left) of a target-sized (width, height) crop in an image of size (w, h); random uses torch's
    RNG so that accelerate's set_seed and DataLoader workers make it reproducible."""
    (w, h), (tw, th) = size, target
    if center:
        return max(0, round((h - th) / 2)), max(0, round((w - tw) / 2))
    top = int(torch.randint(0, h - th + 1, ()).item())
    left = int(torch.randint(0, w - tw + 1, ()).item())
    return top, left


def to_tensor(img: Image.Image) -> torch.Tensor:
    a = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


def prepare_image(img: Image.Image, target: int | tuple[int, int], interpolation: str, flip: bool,
                  center: bool) -> Prepared:
    """RGB image -> training pixels [3, H, W] plus the sizes SDXL conditions on.

    target: the square side (resolution), or a bucket's (width, height)."""
    original_size = (img.height, img.width)
    target = as_target(target)
    img = resize_to_cover(img, target, interpolation)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    top, left = crop_offset(img.size, target, center)
    img = img.crop((left, top, left + target[0], top + target[1]))
    return Prepared(to_tensor(img), original_size, (top, left))
