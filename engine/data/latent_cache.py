"""Latent cache: encode each training image with the VAE once, and reuse the latents across epochs and runs.

One small safetensors file per (image content, resolution or bucket size, interpolation, model, flipped),
named by the sha256 of that key, so a renamed image or a second run finds its latents, and a changed
resolution, bucket or VAE encodes anew. Bucketed keys name the bucket ("bucket 96x48"), square keys the
resolution as before, so a bucketed and a square run never share latents. Files are written atomically
(temp file + os.replace): an interrupted run leaves no half file, and the next run simply encodes what is
missing.

Limits, as in kohya's cache_latents:
- The crop is frozen to the centre: random crop is NOT available with cached latents (each random crop
  would need its own encoding). cfg.center_crop is ignored while caching.
- Flips stay random: with cfg.random_flip both orientations are cached and each example picks one.
- Whatever `encode` returns is stored: with `latent_dist.sample()` one sample is frozen per image.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from engine.config import atomic_write_bytes

from .buckets import item_targets
from .dataset import RepeatedItems
from .images import Prepared, load_rgb, prepare_image
from .items import DataError, Item

CACHE_FORMAT = "1"  # bump when the stored contents change meaning, so old files are not reused


class LatentCache:
    def __init__(self, root: str | Path, model_key: str):
        self.root = Path(root)
        self.model_key = model_key

    def key(self, item: Item, cfg, flipped: bool, target: tuple[int, int]) -> str:
        """target: the (width, height) the item trains at (RepeatedItems.locate, buckets.item_targets)."""
        size = f"bucket {target[0]}x{target[1]}" if cfg.enable_bucket else str(cfg.resolution)
        parts = (CACHE_FORMAT, item.content_id, size, cfg.image_interpolation_mode,
                 self.model_key, "flipped" if flipped else "unflipped", "center-crop")
        return "|".join(parts)

    def path(self, item: Item, cfg, flipped: bool, target: tuple[int, int]) -> Path:
        digest = hashlib.sha256(self.key(item, cfg, flipped, target).encode("utf-8")).hexdigest()
        return self.root / f"{digest}.safetensors"

    def _orientations(self, cfg) -> tuple[bool, ...]:
        return (False, True) if cfg.random_flip else (False,)

    def missing(self, items: Iterable[Item], cfg) -> list[tuple[Item, tuple[int, int], bool, Path]]:
        """(item, target, flipped, file) still to encode; an image present twice is encoded once."""
        items = list(items)
        todo, planned = [], set()
        for item, target in zip(items, item_targets(items, cfg)):
            for flipped in self._orientations(cfg):
                path = self.path(item, cfg, flipped, target)
                if path not in planned and not path.is_file():
                    planned.add(path)
                    todo.append((item, target, flipped, path))
        return todo

    @staticmethod
    def _batches(todo: list, batch_size: int) -> Iterable[list]:
        """Runs of at most batch_size entries of one target size: the VAE encodes a stacked batch.

        The sort is stable, so an image's two orientations stay next to each other (loaded once)."""
        by_size = sorted(todo, key=lambda entry: entry[1])
        for _, group in itertools.groupby(by_size, key=lambda entry: entry[1]):
            group = list(group)
            for start in range(0, len(group), batch_size):
                yield group[start:start + batch_size]

    def prepare(self, items: Iterable[Item], cfg, encode: Callable[[torch.Tensor], torch.Tensor],
                batch_size: int = 4, progress: Callable[[int, int], None] | None = None) -> int:
        """Encode what is not cached yet; returns how many latents were newly encoded.

        `encode` gets a float32 CPU batch [B, 3, H, W] in [-1, 1], all of one bucket (move it to the VAE's
        device and dtype inside) and returns latents [B, C, H/8, W/8]; they are stored as float32 on CPU.
        `progress(done, total)` is called after each batch."""
        todo = self.missing(items, cfg)
        loaded: tuple[Item | None, object] = (None, None)  # both orientations of an image load it once
        done = 0
        for batch in self._batches(todo, batch_size):
            prepared = []
            for item, target, flipped, _ in batch:
                if loaded[0] is not item:
                    loaded = (item, load_rgb(item.load()))
                prepared.append(prepare_image(loaded[1], target, cfg.image_interpolation_mode, flipped,
                                              center=True))
            with torch.no_grad():
                latents = encode(torch.stack([p.pixels for p in prepared]))
            latents = latents.detach().to("cpu", torch.float32)
            if latents.shape[0] != len(batch):
                raise ValueError(f"encode returned {latents.shape[0]} latents for a batch of {len(batch)}")
            for (item, target, flipped, path), latent, prep in zip(batch, latents, prepared):
                self._write(path, latent, prep, item, cfg, flipped, target)
            done += len(batch)
            if progress is not None:
                progress(done, len(todo))
        return len(todo)

    def _write(self, path: Path, latent: torch.Tensor, prep: Prepared, item: Item, cfg, flipped: bool,
               target: tuple[int, int]) -> None:
        metadata = {
            "original_size": json.dumps(list(prep.original_size)),
            "crop_top_left": json.dumps(list(prep.crop_top_left)),
            "key": self.key(item, cfg, flipped, target),
            "image": item.key,  # for people looking into the cache; not part of the key
        }
        atomic_write_bytes(path, safetensors_bytes({"latents": latent.contiguous()}, metadata))

    def load(self, item: Item, cfg, flipped: bool,
             target: tuple[int, int]) -> tuple[torch.Tensor, dict[str, str]]:
        path = self.path(item, cfg, flipped, target)
        if not path.is_file():
            raise DataError(f"no cached latents for {item.key} at {path}; run LatentCache.prepare first")
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor("latents"), f.metadata()

    def dataset(self, items: list[Item], cfg) -> "CachedLatentDataset":
        return CachedLatentDataset(items, cfg, self)


class CachedLatentDataset(RepeatedItems):
    """Like TrainDataset, with `latents` [C, H/8, W/8] from the cache in place of `pixel_values`."""

    def __init__(self, items: list[Item], cfg, cache: LatentCache):
        super().__init__(items, cfg)
        self.cache = cache

    def __getitem__(self, index: int) -> dict:
        item, target = self.locate(index)
        flipped = self.cfg.random_flip and bool(torch.rand(()) < 0.5)
        latents, meta = self.cache.load(item, self.cfg, flipped, target)
        example = self.example(item, json.loads(meta["original_size"]), json.loads(meta["crop_top_left"]),
                               target)
        example["latents"] = latents
        return example
