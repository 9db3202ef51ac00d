"""Training data: find images and captions (sources), turn them into tensors (images, dataset), cache latents.

    items = discover_items(cfg, warn)        # checked Items from train_data_dir or dataset_name
    ds = TrainDataset(items, cfg)            # or LatentCache(root, model_key).dataset(items, cfg)
    loader = DataLoader(ds, batch_size=..., shuffle=True, collate_fn=collate)
"""
from .dataset import TrainDataset, collate
from .images import load_rgb
from .items import IMAGE_EXTENSIONS, DataError, Item, build_caption, tag_frequency
from .latent_cache import LatentCache
from .sources import discover_items, total_repeats

__all__ = [
    "DataError", "Item", "IMAGE_EXTENSIONS", "discover_items", "total_repeats", "load_rgb", "build_caption",
    "tag_frequency", "TrainDataset", "collate", "LatentCache",
]
