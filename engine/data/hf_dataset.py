"""`dataset_name` sources: a save_to_disk folder, or anything `datasets.load_dataset` understands."""
from __future__ import annotations

import io
from functools import partial
from pathlib import Path
from typing import Iterator

from PIL import Image

from .items import DataError, clean_caption

SAVE_TO_DISK_MARKERS = ("dataset_dict.json", "state.json")
IMAGE_ROW_BATCH = 64  # rows read per batch while checking images: bounded memory on big datasets


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else that does not exist is a missing folder."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def _load(name: str):
    import datasets  # heavy import; only sources that need it pay for it

    local = Path(name).expanduser()
    if local.is_dir() and any((local / m).is_file() for m in SAVE_TO_DISK_MARKERS):
        try:
            return datasets.load_from_disk(str(local)), local
        except Exception as e:
            raise DataError(f"could not read the saved dataset in {local} ({type(e).__name__}: {e}); "
                            "it should be a folder written by Dataset.save_to_disk") from None
    if local.exists():
        try:
            return datasets.load_dataset(str(local)), local
        except Exception as e:
            raise DataError(f"could not read the dataset in {local} with datasets.load_dataset "
                            f"({type(e).__name__}: {e})") from None
    if _looks_like_path(name):
        raise DataError(f"dataset_name {name}: no such folder; give an existing folder or a hub id "
                        "like owner/name")
    try:
        return datasets.load_dataset(name), None
    except ConnectionError as e:
        raise DataError(f"could not reach the Hugging Face hub for dataset '{name}' ({e}); without "
                        "network, give a local path instead: a folder written by save_to_disk, or an "
                        "image folder (train_data_dir)") from None
    except Exception as e:
        raise DataError(f"could not load dataset '{name}' from the Hugging Face hub ({type(e).__name__}: "
                        f"{e}); check the id (gated datasets need `hf auth login`), or give a local "
                        "path: a folder written by save_to_disk, or an image folder") from None


def open_train_split(name: str):
    """The 'train' split as a datasets.Dataset, and the local folder it came from (None for the hub)."""
    import datasets

    ds, base = _load(name)
    if isinstance(ds, (datasets.DatasetDict, dict)):
        if "train" not in ds:
            raise DataError(f"dataset {name} has no 'train' split; its splits are: {', '.join(ds) or 'none'}")
        ds = ds["train"]
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"dataset {name} is a {type(ds).__name__}; a map-style Dataset is needed")
    return ds, base


def _check_columns(ds, name: str, cfg) -> None:
    for column, field in ((cfg.image_column, "image_column"), (cfg.caption_column, "caption_column")):
        if column not in ds.column_names:
            raise DataError(f"dataset {name} has no column '{column}' ({field}); its columns are: "
                            f"{', '.join(ds.column_names)}. Set {field} to one of them.")


def _image_source(value, base: Path | None) -> tuple[bytes | None, Path | None]:
    """An undecoded image cell: {'bytes', 'path'} for an Image feature, or a path string."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"], None
        return None, Path(value["path"]) if value.get("path") else None
    if isinstance(value, str):
        path = Path(value)
        return None, path if path.is_absolute() or base is None else base / path
    return None, None


def _read(path: Path | None) -> Path | OSError:
    """The file to check (sources.check_image reads it a block at a time and reports a missing one)."""
    return FileNotFoundError(2, "the row holds no image") if path is None else path


def open_row_image(ds, index: int, column: str, base: Path | None) -> Image.Image:
    """Item.load for a dataset row: module level and bound with partial, so DataLoader workers can pickle it."""
    data, path = _image_source(ds[index][column], base)
    try:
        img = Image.open(io.BytesIO(data) if data is not None else path)
        img.load()
    except Exception as e:
        raise DataError(f"could not read the image of dataset row {index} ({type(e).__name__}: {e})") from None
    return img


def row_candidates(cfg) -> Iterator[tuple[str, bytes | Path | OSError, object, str | None]]:
    """(key, image bytes or file, loader, caption) per row, lazily, so max_train_samples stops the reading
    early. A row without an image yields an OSError in place of the bytes."""
    import datasets

    name = cfg.dataset_name
    ds, base = open_train_split(name)
    _check_columns(ds, name, cfg)
    feature = ds.features[cfg.image_column]
    if isinstance(feature, datasets.Image):
        ds = ds.cast_column(cfg.image_column, datasets.Image(decode=False))  # bytes for content ids
    elif not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise DataError(f"column '{cfg.image_column}' of dataset {name} holds {feature}, not images or "
                        f"image paths; set image_column to the column with the images (columns: "
                        f"{', '.join(ds.column_names)})")
    ds = ds.select_columns([cfg.image_column, cfg.caption_column])
    images_only = ds.select_columns([cfg.image_column])
    index = 0
    for batch in ds.iter(batch_size=IMAGE_ROW_BATCH):
        for value, caption in zip(batch[cfg.image_column], batch[cfg.caption_column]):
            data, path = _image_source(value, base)
            if data is None:
                data = _read(path)
            stored_name = value.get("path") if isinstance(value, dict) else value
            shown = f" ({Path(stored_name).name})" if stored_name else ""
            loader = partial(open_row_image, images_only, index, cfg.image_column, base)
            yield f"dataset row {index}{shown}", data, loader, clean_caption(caption)
            index += 1
