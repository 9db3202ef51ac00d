"""The torch Dataset the training loop iterates, and its collate function."""
from __future__ import annotations

import bisect
import itertools
from typing import Any

import torch
from torch.utils.data import Dataset

from .images import load_rgb, prepare_image
from .items import DataError, Item, build_caption


class RepeatedItems(Dataset):
    """Index i of a dataset where each item appears item.repeats times (kohya's repeats)."""

    def __init__(self, items: list[Item], cfg):
        if not items:
            raise DataError("no training images (the item list is empty)")
        self.items = list(items)
        self.cfg = cfg
        self._ends = list(itertools.accumulate(item.repeats for item in self.items))

    def __len__(self) -> int:
        return self._ends[-1]

    def item_at(self, index: int) -> Item:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        return self.items[bisect.bisect_right(self._ends, index)]

    def example(self, item: Item, original_size, crop_top_left) -> dict[str, Any]:
        """The fields every example carries besides its pixels or latents."""
        r = self.cfg.resolution
        return {
            "caption": build_caption(item.caption, self.cfg.trigger_word),
            "original_size": tuple(int(v) for v in original_size),
            "crop_top_left": tuple(int(v) for v in crop_top_left),
            "target_size": (r, r),
        }


class TrainDataset(RepeatedItems):
    """Images loaded and transformed on the fly: resize, optional flip, random or centre crop."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.item_at(index)
        img = load_rgb(item.load())
        flip = self.cfg.random_flip and bool(torch.rand(()) < 0.5)
        prepared = prepare_image(img, self.cfg.resolution, self.cfg.image_interpolation_mode, flip,
                                 center=self.cfg.center_crop)
        example = self.example(item, prepared.original_size, prepared.crop_top_left)
        example["pixel_values"] = prepared.pixels
        return example


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch; `latents` (from the latent cache) take the place of `pixel_values`."""
    batch: dict[str, Any] = {}
    for name in ("pixel_values", "latents"):
        if name in examples[0]:
            batch[name] = torch.stack([e[name] for e in examples]).contiguous()
    batch["captions"] = [e["caption"] for e in examples]
    for name, plural in (("original_size", "original_sizes"), ("crop_top_left", "crop_top_lefts"),
                         ("target_size", "target_sizes")):
        batch[plural] = torch.tensor([list(e[name]) for e in examples], dtype=torch.long)
    return batch
