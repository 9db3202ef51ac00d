"""Aspect-ratio bucketing (kohya's BucketManager idea): train each image at a (width, height) close to its
own aspect ratio, about resolution x resolution pixels, instead of a square crop of it.

    buckets = make_buckets(512, 256, 1024, 64)                  # every allowed (width, height)
    bucket = assign_bucket(w, h, buckets, False, 512, 64)       # the one an image trains at
    sampler = BucketBatchSampler(dataset.bucket_of, batch_size, seed)   # batches of one bucket each

Batches must hold one size to be stacked, so the sampler batches within buckets and then shuffles the
batches; its order is a function of (seed, epoch), so a resumed run sees the same batches.
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from .images import displayed_size
from .items import Item


def make_buckets(resolution: int, min_reso: int, max_reso: int, steps: int) -> list[tuple[int, int]]:
    """(width, height) pairs, sides multiples of `steps` in [min_reso, max_reso], area <= resolution**2.

    For each width the largest height that fits; transposes too; the square (resolution, resolution)
    always. Sorted, unique."""
    if min_reso % steps or max_reso % steps or not 0 < min_reso <= max_reso:
        raise ValueError(f"bucket sides: min_reso = {min_reso} and max_reso = {max_reso} must be multiples "
                         f"of steps = {steps}, with min_reso <= max_reso")
    area = resolution * resolution
    buckets = {(resolution, resolution)}
    for width in range(min_reso, max_reso + 1, steps):
        height = min(max_reso, area // width // steps * steps)
        if height >= min_reso:
            buckets.update({(width, height), (height, width)})
    return sorted(buckets)


def _log_aspect_error(bucket: tuple[int, int], log_aspect: float) -> float:
    return abs(math.log(bucket[0] / bucket[1]) - log_aspect)


def _round_to(value: float, steps: int, low: int, high: int) -> int:
    return min(high, max(low, round(value / steps) * steps))


def _shrunk_bucket(width: int, height: int, steps: int) -> tuple[int, int]:
    """kohya's bucket_no_upscale: the image's own size rounded down to multiples of `steps`. As kohya does,
    round the width down and fit the height to the aspect, or the other way round, whichever keeps the
    aspect closer. A side shorter than `steps` becomes `steps` (the one case that enlarges)."""
    log_aspect = math.log(width / height)
    floor_w, floor_h = max(steps, width // steps * steps), max(steps, height // steps * steps)
    by_width = (floor_w, _round_to(floor_w * height / width, steps, steps, floor_h))
    by_height = (_round_to(floor_h * width / height, steps, steps, floor_w), floor_h)
    return min((by_width, by_height), key=lambda b: (_log_aspect_error(b, log_aspect), -b[0] * b[1]))


def assign_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]], no_upscale: bool,
                  resolution: int, steps: int) -> tuple[int, int]:
    """The bucket an image of (width, height) trains at: the one whose aspect ratio is closest (in log
    terms, so 2:1 and 1:2 are equally far from square). With no_upscale, an image of fewer than
    resolution**2 pixels gets its own smaller bucket instead, so it is never enlarged."""
    if no_upscale and width * height < resolution * resolution:
        return _shrunk_bucket(width, height, steps)
    log_aspect = math.log(width / height)
    return min(buckets, key=lambda b: _log_aspect_error(b, log_aspect))


def item_size(item: Item) -> tuple[int, int]:
    """Displayed (width, height): from discovery when it noted it, else read from the image."""
    return item.size if item.size is not None else displayed_size(item.load())


def item_targets(items: Sequence[Item], cfg) -> list[tuple[int, int]]:
    """The (width, height) each item trains at: its bucket with cfg.enable_bucket, else the square."""
    if not cfg.enable_bucket:
        return [(cfg.resolution, cfg.resolution)] * len(items)
    steps = cfg.bucket_reso_steps
    buckets = make_buckets(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso, steps)
    return [assign_bucket(*item_size(item), buckets, cfg.bucket_no_upscale, cfg.resolution, steps)
            for item in items]


def _epoch_seed(seed: int, epoch: int) -> int:
    """One 63-bit generator seed per (seed, epoch); hashing keeps (1, 0) and (0, 1) apart."""
    digest = hashlib.sha256(f"{seed}/{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices, each from one bucket (a bucket's last batch may be short).

    Each epoch: shuffle within each bucket, cut into batches, shuffle the batches; all from a generator
    seeded with (seed, epoch), so every process and a resumed run see the same order. Call set_epoch()
    before each epoch. shuffle=False gives a stable order: buckets in id order, indices ascending.
    """

    # accelerate's BatchSamplerShard (multi-process) reads batch_size: an int makes it drop rounds that end
    # in a short batch and pad the epoch's end with indices from mixed buckets; None tells it that batch
    # lengths vary, so it deals out whole batches. The requested size is max_batch_size.
    batch_size = None

    def __init__(self, bucket_of: Sequence[int], batch_size: int, seed: int, shuffle: bool = True,
                 drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.max_batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self._members: dict[int, list[int]] = {}
        for index, bucket in enumerate(bucket_of):
            self._members.setdefault(bucket, []).append(index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This epoch's batches, in order."""
        generator = torch.Generator().manual_seed(_epoch_seed(self.seed, self.epoch))
        out = []
        for bucket in sorted(self._members):
            members = self._members[bucket]
            if self.shuffle:
                members = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
            for start in range(0, len(members), self.max_batch_size):
                batch = members[start:start + self.max_batch_size]
                if len(batch) == self.max_batch_size or not self.drop_last:
                    out.append(batch)
        if self.shuffle:
            out = [out[i] for i in torch.randperm(len(out), generator=generator).tolist()]
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        size = self.max_batch_size
        return sum(len(m) // size if self.drop_last else -(-len(m) // size) for m in self._members.values())
