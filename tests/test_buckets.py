"""Aspect-ratio bucketing: the bucket grid, bucket choice, bucketed datasets and latents, the sampler."""
from __future__ import annotations

import math
import pickle
import random

import pytest
import torch
from PIL import Image

from engine.config import validate
from engine.data import (BucketBatchSampler, LatentCache, TrainDataset, assign_bucket, collate,
                         discover_items, make_buckets)
from engine.data.images import prepare_image

import test_data
from test_data import _encode_with, coordinate_image, item_of, to_uint8

vae = test_data.vae  # the tiny AutoencoderKL fixture, shared rather than copied

STEPS = 16
# 128 is the least resolution that leaves room for buckets (min_bucket_reso is at least 64).
BUCKET_CFG = {"resolution": 128, "enable_bucket": True, "min_bucket_reso": 64, "max_bucket_reso": 256,
              "bucket_reso_steps": STEPS, "center_crop": True, "image_interpolation_mode": "nearest"}


def bucket_cfg(folder=".", **values):
    return validate({"train_data_dir": str(folder), **BUCKET_CFG, **values})


def log_aspect_error(bucket, width, height):
    return abs(math.log(bucket[0] / bucket[1]) - math.log(width / height))


# ----------------------------------------------------------------------------- the grid and the choice

@pytest.mark.parametrize("resolution, lo, hi, steps", [(128, 64, 256, 16), (512, 256, 1024, 64),
                                                       (1024, 512, 2048, 64), (512, 256, 1024, 8)])
def test_make_buckets_limits_and_largest_heights(resolution, lo, hi, steps):
    buckets = make_buckets(resolution, lo, hi, steps)
    assert buckets == sorted(set(buckets))
    assert (resolution, resolution) in buckets
    for w, h in buckets:
        assert lo <= w <= hi and lo <= h <= hi and w % steps == 0 and h % steps == 0
        assert w * h <= resolution ** 2
        assert (h, w) in buckets
    # Brute force: per width, the largest height that fits; those pairs and their transposes are all.
    sides = range(lo, hi + 1, steps)
    expected = {(resolution, resolution)}
    for w in sides:
        fitting = [h for h in sides if w * h <= resolution ** 2]
        if fitting:
            expected |= {(w, max(fitting)), (max(fitting), w)}
    assert set(buckets) == expected


def test_make_buckets_rejects_sides_off_the_steps():
    with pytest.raises(ValueError, match="multiples of steps"):
        make_buckets(512, 200, 1024, 64)


def test_assign_bucket_picks_the_closest_aspect():
    buckets = make_buckets(512, 256, 1024, 64)
    rng = random.Random(0)
    for _ in range(100):
        w, h = rng.randint(50, 3000), rng.randint(50, 3000)
        bucket = assign_bucket(w, h, buckets, False, 512, 64)
        assert bucket in buckets
        assert log_aspect_error(bucket, w, h) == min(log_aspect_error(b, w, h) for b in buckets)
    wide = assign_bucket(1024, 512, buckets, False, 512, 64)
    assert wide[0] > wide[1] and assign_bucket(512, 1024, buckets, False, 512, 64) == wide[::-1]
    assert assign_bucket(300, 300, buckets, False, 512, 64) == (512, 512)  # upscaled without no_upscale
    assert assign_bucket(5000, 100, buckets, False, 512, 64) == (1024, 256)  # past the grid: the widest


def test_no_upscale_keeps_small_images_small():
    buckets = make_buckets(512, 256, 1024, 64)
    rng = random.Random(1)
    for steps in (8, 64):
        for _ in range(100):
            w, h = rng.randint(steps, 700), rng.randint(steps, 700)
            if w * h >= 512 * 512:
                continue
            bw, bh = assign_bucket(w, h, buckets, True, 512, steps)
            assert bw <= w and bh <= h and bw % steps == 0 and bh % steps == 0
            # At least as true to the aspect as flooring both sides.
            floored = (w // steps * steps, h // steps * steps)
            assert log_aspect_error((bw, bh), w, h) <= log_aspect_error(floored, w, h) + 1e-12
            # Covering the bucket then crops away less than one step per axis.
            scale = max(bw / w, bh / h)
            assert round(w * scale) - bw < steps and round(h * scale) - bh < steps
    assert assign_bucket(448, 320, buckets, True, 512, 64) == (448, 320)
    assert assign_bucket(300, 390, buckets, True, 512, 64) == (256, 320)  # closer than floored (256, 384)
    for w, h in ((2000, 1000), (512, 512)):  # at or above the area: the normal buckets
        assert assign_bucket(w, h, buckets, True, 512, 64) == assign_bucket(w, h, buckets, False, 512, 64)


def test_prepare_image_covers_the_bucket_and_crops_only_the_aspect_mismatch():
    rng = random.Random(2)
    for _ in range(30):
        w, h = rng.randint(20, 300), rng.randint(20, 300)
        bw, bh = rng.choice(make_buckets(128, 64, 256, STEPS))
        prepared = prepare_image(Image.new("RGB", (w, h)), (bw, bh), "bilinear", flip=False, center=True)
        assert prepared.pixels.shape == (3, bh, bw) and prepared.original_size == (h, w)
        top, left = prepared.crop_top_left
        if w / h >= bw / bh:  # wider than the bucket: heights match, the width's excess is cut evenly
            assert top == 0 and abs(2 * left - (bh * w / h - bw)) <= 1.5
        else:
            assert left == 0 and abs(2 * top - (bw * h / w - bh)) <= 1.5


# ----------------------------------------------------------------------------- bucketed datasets

@pytest.fixture
def mixed_folder(tmp_path):
    """Images of several shapes (coordinate images: any pixel tells where it came from)."""
    for name, size in (("wide.png", (120, 72)), ("tall.png", (72, 120)), ("square.png", (64, 64)),
                       ("two_to_one.png", (120, 60))):
        coordinate_image(*size).save(tmp_path / name)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 120x60, shown 60x120
    coordinate_image(120, 60).save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    return tmp_path


# (width, height) shown -> bucket, with the config above; the first three have a bucket's exact aspect.
EXPECTED = {"wide.png": ((120, 72), (160, 96)), "tall.png": ((72, 120), (96, 160)),
            "square.png": ((64, 64), (128, 128)), "two_to_one.png": ((120, 60), (176, 80)),
            "rotated.jpg": ((60, 120), (80, 176))}


def test_bucketed_dataset_shapes_time_ids_and_crops(mixed_folder):
    cfg = bucket_cfg(mixed_folder, repeats=2)
    items = discover_items(cfg, lambda m: None)
    assert {it.key: it.size for it in items} == {k: v[0] for k, v in EXPECTED.items()}  # from the header
    ds = TrainDataset(items, cfg)
    assert ds.buckets == sorted({bucket for _, bucket in EXPECTED.values()})
    assert len(ds.bucket_of) == len(ds) == 10

    for index in range(len(ds)):
        item, target = ds.locate(index)
        (w, h), (bw, bh) = EXPECTED[item.key]
        assert target == (bw, bh) and ds.buckets[ds.bucket_of[index]] == (bw, bh)
        ex = ds[index]
        assert ex["pixel_values"].shape == (3, bh, bw)
        assert ex["original_size"] == (h, w) and ex["target_size"] == (bh, bw)
        # The aspect is kept: the cover resize fits one side exactly and crops less than a step of the other.
        scale = max(bw / w, bh / h)
        top, left = ex["crop_top_left"]
        assert (top == 0 or left == 0) and 2 * top < STEPS and 2 * left < STEPS
        assert (round(h * scale) - bh, round(w * scale) - bw) in ((2 * top, 0), (0, 2 * left),
                                                                   (2 * top + 1, 0), (0, 2 * left + 1))

    by_key = {ds.locate(i)[0].key: ds[i] for i in range(0, len(ds), 2)}
    assert by_key["two_to_one.png"]["crop_top_left"] == (4, 0)  # 120x60 -> 176x88, 8 rows cut
    wide = to_uint8(by_key["wide.png"]["pixel_values"])  # 120x72 -> 160x96: nothing cut
    assert tuple(wide[0, 0, :2]) == (0, 0) and tuple(wide[95, 159, :2]) == (2 * 119, 2 * 71)

    # Items that do not know their size (made in code, not discovered) read it from the image.
    loaded = [item_of(it.load(), it.key) for it in items]
    from_images = TrainDataset(loaded, cfg)
    assert from_images.buckets == ds.buckets
    assert [from_images.locate(i)[1] for i in range(5)] == [ds.locate(2 * i)[1] for i in range(5)]


def test_random_crops_stay_in_the_bucket(mixed_folder):
    ds = TrainDataset(discover_items(bucket_cfg(mixed_folder), lambda m: None),
                      bucket_cfg(mixed_folder, center_crop=False, random_flip=True))
    torch.manual_seed(0)
    index = next(i for i in range(len(ds)) if ds.locate(i)[0].key == "two_to_one.png")
    offsets = {ds[index]["crop_top_left"] for _ in range(30)}
    assert offsets == {(t, 0) for t in range(9)}  # 88 rows, 80 kept: every offset 0..8 turns up


def test_without_bucketing_nothing_changes(mixed_folder):
    cfg = bucket_cfg(mixed_folder, enable_bucket=False)
    ds = TrainDataset(discover_items(cfg, lambda m: None), cfg)
    assert ds.buckets == [(128, 128)] and set(ds.bucket_of) == {0}
    assert all(ds[i]["pixel_values"].shape == (3, 128, 128) for i in range(len(ds)))


def test_collate_refuses_mixed_sizes():
    example = {"caption": "c", "original_size": (1, 2), "crop_top_left": (0, 0), "target_size": (64, 64)}
    with pytest.raises(ValueError, match="mixes pixel_values of shapes"):
        collate([{**example, "pixel_values": torch.zeros(3, 64, 64)},
                 {**example, "pixel_values": torch.zeros(3, 64, 32)}])


# ----------------------------------------------------------------------------- the batch sampler

BUCKET_OF = [0, 1, 0, 2, 1, 0, 0, 2, 0, 1, 0, 0, 3]  # sizes 7, 3, 2, 1


def _batches(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_batches_hold_one_bucket_and_every_index_once(drop_last):
    sampler = BucketBatchSampler(BUCKET_OF, batch_size=3, seed=7, drop_last=drop_last)
    for epoch in range(3):
        batches = _batches(sampler, epoch)
        assert len(batches) == len(sampler) == (2 + 1 if drop_last else 3 + 1 + 1 + 1)
        assert all(len({BUCKET_OF[i] for i in b}) == 1 and 1 <= len(b) <= 3 for b in batches)
        seen = sorted(i for b in batches for i in b)
        if drop_last:
            assert all(len(b) == 3 for b in batches) and len(seen) == len(set(seen)) == 9
        else:
            assert seen == list(range(len(BUCKET_OF)))


def test_sampler_order_is_a_function_of_seed_and_epoch():
    a, b = BucketBatchSampler(BUCKET_OF, 2, seed=7), BucketBatchSampler(BUCKET_OF, 2, seed=7)
    assert _batches(a, 4) == _batches(b, 4)  # a resumed run sees the same epoch
    assert _batches(a, 0) != _batches(a, 1)
    assert _batches(a, 0) != _batches(BucketBatchSampler(BUCKET_OF, 2, seed=8), 0)
    assert _batches(a, 3) == _batches(a, 3)

    ordered = BucketBatchSampler(BUCKET_OF, 2, seed=7, shuffle=False)
    stable = [[0, 2], [5, 6], [8, 10], [11], [1, 4], [9], [3, 7], [12]]  # buckets in id order
    assert _batches(ordered, 0) == _batches(ordered, 5) == stable


def test_sampler_shards_whole_batches_across_processes():
    from accelerate.data_loader import BatchSamplerShard
    sampler = BucketBatchSampler(BUCKET_OF, batch_size=2, seed=3)
    shards = [list(BatchSamplerShard(sampler, num_processes=2, process_index=p)) for p in range(2)]
    assert len(shards[0]) == len(shards[1]) == math.ceil(len(sampler) / 2)
    assert all(len({BUCKET_OF[i] for i in b}) == 1 for shard in shards for b in shard)
    assert {i for shard in shards for b in shard for i in b} == set(range(len(BUCKET_OF)))


def test_sampler_through_a_dataloader(mixed_folder):
    cfg = bucket_cfg(mixed_folder, repeats=3, trigger_word="t")
    ds = TrainDataset(discover_items(cfg, lambda m: None), cfg)
    sampler = BucketBatchSampler(ds.bucket_of, batch_size=2, seed=0)
    pickle.loads(pickle.dumps((ds, sampler)))  # DataLoader workers need them picklable
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    assert len(loader) == len(sampler) == 5 * 2
    count = 0
    for batch in loader:
        n, _, h, w = batch["pixel_values"].shape
        assert batch["target_sizes"].tolist() == [[h, w]] * n and batch["captions"] == ["t"] * n
        count += n
    assert count == len(ds) == 15


# ----------------------------------------------------------------------------- latent cache

def test_latent_cache_with_buckets(tmp_path, mixed_folder, vae):
    cfg = bucket_cfg(mixed_folder, cache_latents=True, repeats=2)
    items = discover_items(cfg, lambda m: None)
    cache = LatentCache(tmp_path / "cache", "tiny-vae")
    batches = []
    assert cache.prepare(items, cfg, _encode_with(vae, batches), batch_size=2) == 5
    assert batches == [1] * 5  # one image per bucket: a batch never mixes sizes
    assert cache.prepare(items, cfg, _encode_with(vae, batches)) == 0

    cached, fresh = cache.dataset(items, cfg), TrainDataset(items, cfg)
    down = 2 ** (len(vae.config.block_out_channels) - 1)  # 2 for this tiny VAE, 8 for SD's
    assert cached.buckets == fresh.buckets and cached.bucket_of == fresh.bucket_of
    for i in range(0, len(cached), 2):
        c, f = cached[i], fresh[i]
        bw, bh = cached.locate(i)[1]
        assert c["latents"].shape == (4, bh // down, bw // down)
        with torch.no_grad():
            expected = _encode_with(vae)(f["pixel_values"][None])[0]
        torch.testing.assert_close(c["latents"], expected, atol=1e-5, rtol=1e-4)
        assert (c["original_size"], c["crop_top_left"], c["target_size"]) == (
            f["original_size"], f["crop_top_left"], f["target_size"])
    sampler = BucketBatchSampler(cached.bucket_of, 2, seed=0)
    loader = torch.utils.data.DataLoader(cached, batch_sampler=sampler, collate_fn=collate)
    assert sum(b["latents"].shape[0] for b in loader) == 10

    # Same images square: its own latents, even for the image whose bucket is the square.
    assert cache.prepare(items, cfg.replace(enable_bucket=False), _encode_with(vae)) == 5
