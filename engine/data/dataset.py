"""The torch Dataset the training loop iterates, and its collate function."""
from __future__ import annotations

import bisect
import itertools
from typing import Any

import torch
from torch.utils.data import Dataset

from .buckets import item_targets
from .augment import color_jitter, jitter_ranges, shuffle_tags
from .images import load_rgb, prepare_image
from .items import DataError, Item, build_caption


MAX_EPOCH_EXAMPLES = 10_000_000  # images x repeats; the per-example bucket list costs ~80 MB at this size


class RepeatedItems(Dataset):
    """Index i of a dataset where each item appears item.repeats times (kohya's repeats).

    Every item trains at a (width, height): its aspect-ratio bucket with cfg.enable_bucket, else the
    square resolution. `buckets` lists the sizes in use and `bucket_of[i]` is index i's position in it
    (one bucket when bucketing is off): what BucketBatchSampler batches by."""

    def __init__(self, items: list[Item], cfg):
        if not items:
            raise DataError("no training images (the item list is empty)")
        self.items = list(items)
        self.cfg = cfg
        self._ends = list(itertools.accumulate(item.repeats for item in self.items))
        if self._ends[-1] > MAX_EPOCH_EXAMPLES:  # checked before bucket_of holds an entry per example
            raise DataError(f"{len(self.items)} images with their repeats make {self._ends[-1]:,} examples per "
                            f"epoch, more than the {MAX_EPOCH_EXAMPLES:,} allowed; lower repeats (and the N of "
                            "kohya N_concept folders)")
        targets = item_targets(self.items, cfg)
        self.buckets: list[tuple[int, int]] = sorted(set(targets))
        bucket_ids = {size: i for i, size in enumerate(self.buckets)}
        self._item_bucket = [bucket_ids[size] for size in targets]
        self.bucket_of: list[int] = [bucket for bucket, item in zip(self._item_bucket, self.items)
                                     for _ in range(item.repeats)]

    def __len__(self) -> int:
        return self._ends[-1]

    def locate(self, index: int) -> tuple[Item, tuple[int, int]]:
        """The item at `index` and the (width, height) it trains at."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        position = bisect.bisect_right(self._ends, index)
        return self.items[position], self.buckets[self._item_bucket[position]]

    def example(self, item: Item, original_size, crop_top_left, target: tuple[int, int]) -> dict[str, Any]:
        """The fields every example carries besides its pixels or latents."""
        caption = build_caption(item.caption, self.cfg.trigger_word)
        if self.cfg.shuffle_caption:
            caption = shuffle_tags(caption, self.cfg.keep_tokens, self.cfg.trigger_word)
        return {
            "caption": caption,
            "original_size": tuple(int(v) for v in original_size),
            "crop_top_left": tuple(int(v) for v in crop_top_left),
            "target_size": (int(target[1]), int(target[0])),  # (h, w), like the other two
        }


class TrainDataset(RepeatedItems):
    """Images loaded and transformed on the fly: resize, optional flip, random or centre crop."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        item, target = self.locate(index)
        img = load_rgb(item.load())
        if any(jitter_ranges(self.cfg)):
            img = color_jitter(img, *jitter_ranges(self.cfg))
        flip = self.cfg.random_flip and bool(torch.rand(()) < 0.5)
        prepared = prepare_image(img, target, self.cfg.image_interpolation_mode, flip,
                                 center=self.cfg.center_crop)
        example = self.example(item, prepared.original_size, prepared.crop_top_left, target)
        example["pixel_values"] = prepared.pixels
        return example


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch; `latents` (from the latent cache) take the place of `pixel_values`."""
    batch: dict[str, Any] = {}
    for name in ("pixel_values", "latents"):
        if name in examples[0]:
            shapes = sorted({tuple(e[name].shape) for e in examples})
            if len(shapes) > 1:
                raise ValueError(f"a batch mixes {name} of shapes {shapes}: with enable_bucket, batch with "
                                 "BucketBatchSampler(dataset.bucket_of, ...) so each batch holds one bucket")
            batch[name] = torch.stack([e[name] for e in examples]).contiguous()
    batch["captions"] = [e["caption"] for e in examples]
    for name, plural in (("original_size", "original_sizes"), ("crop_top_left", "crop_top_lefts"),
                         ("target_size", "target_sizes")):
        batch[plural] = torch.tensor([list(e[name]) for e in examples], dtype=torch.long)
    return batch
