"""Pixels: any stored image to 8-bit RGB, and the resize / flip / crop that training uses.

The transform follows the diffusers SDXL script: shorter side to the resolution, optional horizontal
flip, then a square crop; the crop offset is measured in the flipped, resized image, since that is
what SDXL's time ids describe.
"""
from __future__ import annotations

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


@dataclass
class Prepared:
    pixels: torch.Tensor  # float32 [3, R, R] in [-1, 1]
    original_size: tuple[int, int]  # (h, w) of the loaded image
    crop_top_left: tuple[int, int]  # (top, left) in the flipped, resized image


def resize_shorter_side(img: Image.Image, resolution: int, interpolation: str) -> Image.Image:
    w, h = img.size
    scale = resolution / min(w, h)
    # max() guards against rounding the shorter side below the crop size.
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    return img if size == img.size else img.resize(size, RESAMPLING[interpolation])


def crop_offset(size: tuple[int, int], resolution: int, center: bool) -> tuple[int, int]:
    """(top, left) of a resolution-square crop in an image of size (w, h); random uses torch's RNG
    so that accelerate's set_seed and DataLoader workers make it reproducible."""
    w, h = size
    if center:
        return max(0, round((h - resolution) / 2)), max(0, round((w - resolution) / 2))
    top = int(torch.randint(0, h - resolution + 1, ()).item())
    left = int(torch.randint(0, w - resolution + 1, ()).item())
    return top, left


def to_tensor(img: Image.Image) -> torch.Tensor:
    a = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(a).permute(2, 0, 1).contiguous()


def prepare_image(img: Image.Image, resolution: int, interpolation: str, flip: bool,
                  center: bool) -> Prepared:
    """RGB image -> training pixels plus the sizes SDXL conditions on."""
    original_size = (img.height, img.width)
    img = resize_shorter_side(img, resolution, interpolation)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    top, left = crop_offset(img.size, resolution, center)
    img = img.crop((left, top, left + resolution, top + resolution))
    return Prepared(to_tensor(img), original_size, (top, left))
