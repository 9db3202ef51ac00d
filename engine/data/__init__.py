"""Training data: find images and captions (sources), turn them into tensors (images, dataset), cache latents.

    items = discover_items(cfg, warn)        # checked Items from train_data_dir or dataset_name
    ds = TrainDataset(items, cfg)            # or LatentCache(root, model_key).dataset(items, cfg)
    loader = DataLoader(ds, batch_size=..., shuffle=True, collate_fn=collate)

With cfg.enable_bucket, batch by aspect-ratio bucket instead (each batch must hold one size):

    sampler = BucketBatchSampler(ds.bucket_of, cfg.train_batch_size, seed=cfg.seed)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate)   # sampler.set_epoch(e) each epoch
"""
from .buckets import BucketBatchSampler, assign_bucket, make_buckets
from .dataset import TrainDataset, collate
from .images import load_rgb
from .items import IMAGE_EXTENSIONS, DataError, Item, build_caption, tag_frequency
from .latent_cache import LatentCache
from .sources import discover_items, total_repeats

__all__ = [
    "DataError", "Item", "IMAGE_EXTENSIONS", "discover_items", "total_repeats", "load_rgb", "build_caption",
    "tag_frequency", "TrainDataset", "collate", "LatentCache", "make_buckets", "assign_bucket",
    "BucketBatchSampler",
]
