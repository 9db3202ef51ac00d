"""engine.data: layouts, bad inputs, image modes, the transform, and the latent cache, on real tiny files."""
from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import ConfigError, validate
from engine.data import (DataError, Item, LatentCache, TrainDataset, build_caption, collate, discover_items,
                         load_rgb, tag_frequency)
from engine.data.images import prepare_image


# ----------------------------------------------------------------------------- helpers

def cfg_for(**values):
    return validate({"resolution": 64, **values})


def save_image(path, size=(16, 16), color=(200, 30, 30), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, fmt)
    return path


def discover(**values):
    warnings: list[str] = []
    items = discover_items(cfg_for(**values), warnings.append)
    return items, warnings


def by_key(items):
    return {it.key: it for it in items}


def caption_warnings(warnings):
    return [w for w in warnings if "no caption" in w]


def coordinate_image(w, h):
    """R channel = 2x, G channel = 2y: any pixel tells where it came from (w, h up to 128)."""
    x = np.arange(w)[None, :].repeat(h, 0)
    y = np.arange(h)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([2 * x, 2 * y, np.zeros_like(x)], -1).astype(np.uint8), "RGB")


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    return np.rint((pixels.permute(1, 2, 0).numpy() + 1) * 127.5).astype(int)


def item_of(img: Image.Image, key="img", caption=None, repeats=1):
    return Item(key=key, load=lambda: img.copy(), caption=caption, repeats=repeats,
                content_id=hashlib.sha256(img.tobytes()).hexdigest())


# ----------------------------------------------------------------------------- layouts

def test_sidecar_captions_top_level(tmp_path):
    a = save_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("  a red\nsquare \n", encoding="utf-8")
    save_image(tmp_path / "b.jpg", fmt="JPEG")
    (tmp_path / "b.caption").write_text("from .caption", encoding="utf-8")
    save_image(tmp_path / "c.PNG")  # upper-case extension, no caption
    save_image(tmp_path / ".hidden.png")
    save_image(tmp_path / "sub" / "deep.png")  # not searched recursively
    (tmp_path / "notes.md").write_text("not an image")

    items, warnings = discover(train_data_dir=str(tmp_path), repeats=3)

    got = by_key(items)
    assert sorted(got) == ["a.png", "b.jpg", "c.PNG"]
    assert got["a.png"].caption == "a red square"
    assert got["b.jpg"].caption == "from .caption"
    assert got["c.PNG"].caption is None
    assert {it.repeats for it in items} == {3}
    assert {it.concept for it in items} == {""}
    assert got["a.png"].content_id == hashlib.sha256(a.read_bytes()).hexdigest()
    assert got["a.png"].load().size == (16, 16)
    assert caption_warnings(warnings) == [
        "1 of 3 images have no caption (e.g. c.PNG); they train with an empty caption; add caption "
        "files (e.g. c.txt) or set trigger_word"]


def test_custom_caption_extension_and_trigger_wording(tmp_path):
    save_image(tmp_path / "a.png")
    (tmp_path / "a.tags").write_text("tagged", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ignored: not the configured extension", encoding="utf-8")
    save_image(tmp_path / "b.png")
    items, warnings = discover(train_data_dir=str(tmp_path), caption_extension="tags", trigger_word="zq")
    assert by_key(items)["a.png"].caption == "tagged"
    assert caption_warnings(warnings) == [
        "1 of 2 images have no caption (e.g. b.png); they train on the trigger word 'zq' alone"]


def test_odd_caption_files_and_bad_metadata(tmp_path):
    save_image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))
    items, warnings = discover(train_data_dir=str(tmp_path))
    assert items[0].caption.startswith("caf") and items[0].caption.endswith("au lait")
    assert any("a.txt" in w and "not UTF-8" in w for w in warnings)

    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "ok"}\n{not json}\n')
    with pytest.raises(DataError, match=r"metadata.jsonl line 2 is not valid JSON"):
        discover(train_data_dir=str(tmp_path))


def test_images_and_captions_folders(tmp_path):
    save_image(tmp_path / "images" / "x.png")
    save_image(tmp_path / "images" / "y.webp", fmt="WEBP")
    (tmp_path / "captions").mkdir()
    (tmp_path / "captions" / "x.txt").write_text("caption of x", encoding="utf-8")
    items, warnings = discover(train_data_dir=str(tmp_path))
    got = by_key(items)
    assert sorted(got) == ["images/x.png", "images/y.webp"]
    assert got["images/x.png"].caption == "caption of x"
    assert got["images/y.webp"].caption is None
    assert len(caption_warnings(warnings)) == 1


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_imagefolder_metadata(tmp_path, fmt):
    for name in ("a.png", "b.png", "extra.png"):
        save_image(tmp_path / name)
    rows = [{"file_name": "a.png", "caption": "first, red"}, {"file_name": "b.png", "caption": "second"},
            {"file_name": "gone.png", "caption": "missing file"}]
    if fmt == "jsonl":
        (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        (tmp_path / "metadata.csv").write_text(
            "file_name,caption\n" + "".join(f"{r['file_name']},\"{r['caption']}\"\n" for r in rows))

    items, warnings = discover(train_data_dir=str(tmp_path), caption_column="caption")

    assert [(it.key, it.caption) for it in items] == [("a.png", "first, red"), ("b.png", "second")]
    assert any("gone.png" in w and "no such file" in w for w in warnings)
    assert any("1 images" in w and "not listed" in w and "extra.png" in w for w in warnings)

    with pytest.raises(DataError) as err:  # default caption_column "text" is not there
        discover(train_data_dir=str(tmp_path))
    assert "no column 'text'" in str(err.value) and "file_name, caption" in str(err.value)
    assert "caption_column" in str(err.value)


def test_kohya_concept_folders(tmp_path):
    save_image(tmp_path / "10_sks dog" / "a.png")
    save_image(tmp_path / "10_sks dog" / "b.png")
    (tmp_path / "10_sks dog" / "b.txt").write_text("sks dog, on grass", encoding="utf-8")
    save_image(tmp_path / "2_cat" / "c.png")
    save_image(tmp_path / "0_never" / "d.png")
    save_image(tmp_path / "loose" / "e.png")

    items, warnings = discover(train_data_dir=str(tmp_path), repeats=2)

    got = by_key(items)
    assert sorted(got) == ["10_sks dog/a.png", "10_sks dog/b.png", "2_cat/c.png"]
    assert got["10_sks dog/a.png"].caption == "sks dog"  # concept text stands in for a missing caption
    assert got["10_sks dog/b.png"].caption == "sks dog, on grass"
    assert got["2_cat/c.png"].caption == "cat"
    assert [got[k].repeats for k in sorted(got)] == [20, 20, 4]
    assert got["10_sks dog/a.png"].concept == "10_sks dog"
    assert any("0_never" in w for w in warnings) and any("loose" in w for w in warnings)
    assert caption_warnings(warnings) == []

    assert tag_frequency(items) == {"10_sks dog": {"sks dog": 2, "on grass": 1}, "2_cat": {"cat": 1}}


def _save_to_disk_dataset(path, n=3, captions=None):
    import datasets
    images = [Image.new("RGB", (16 + i, 12), (40 * i, 0, 0)) for i in range(n)]
    captions = captions or [f"row {i}" for i in range(n)]
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": images, "text": captions}, features=features)
    ds.save_to_disk(str(path))
    return ds


def test_save_to_disk_dataset(tmp_path):
    _save_to_disk_dataset(tmp_path / "ds", n=3, captions=["row 0", "", "row 2"])
    items, warnings = discover(dataset_name=str(tmp_path / "ds"), repeats=2)

    assert [it.key for it in items] == ["dataset row 0", "dataset row 1", "dataset row 2"]
    assert [it.caption for it in items] == ["row 0", None, "row 2"]
    assert [it.load().size for it in items] == [(16, 12), (17, 12), (18, 12)]
    assert load_rgb(items[2].load()).getpixel((0, 0)) == (80, 0, 0)
    assert {it.repeats for it in items} == {2}
    assert len({it.content_id for it in items}) == 3
    assert caption_warnings(warnings) == [
        "1 of 3 images have no caption (e.g. dataset row 1); they train with an empty caption; "
        "fill the 'text' column or set trigger_word"]
    again, _ = discover(dataset_name=str(tmp_path / "ds"))
    assert [it.content_id for it in again] == [it.content_id for it in items]  # stable across runs
    assert pickle.loads(pickle.dumps(items[0].load))().size == (16, 12)  # loaders reach DataLoader workers

    limited, _ = discover(dataset_name=str(tmp_path / "ds"), max_train_samples=2)
    assert [it.key for it in limited] == ["dataset row 0", "dataset row 1"]


def test_dataset_wrong_column_and_missing_split(tmp_path):
    import datasets
    _save_to_disk_dataset(tmp_path / "ds")
    with pytest.raises(DataError) as err:
        discover(dataset_name=str(tmp_path / "ds"), caption_column="prompt")
    message = str(err.value)
    assert "no column 'prompt'" in message and "image, text" in message and "caption_column" in message

    with pytest.raises(DataError) as err:
        discover(dataset_name=str(tmp_path / "ds"), image_column="picture")
    assert "no column 'picture'" in str(err.value) and "image_column" in str(err.value)

    split = datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))], "text": ["x"]},
                                       features=datasets.Features({"image": datasets.Image(),
                                                                   "text": datasets.Value("string")}))
    datasets.DatasetDict({"validation": split, "test": split}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError) as err:
        discover(dataset_name=str(tmp_path / "dd"))
    assert "no 'train' split" in str(err.value) and "validation, test" in str(err.value)


def test_dataset_rows_with_missing_image_files_are_skipped(tmp_path):
    import datasets
    save_image(tmp_path / "here.png")
    ds = datasets.Dataset.from_dict({"image": [str(tmp_path / "here.png"), str(tmp_path / "gone.png")],
                                     "text": ["here", "gone"]})  # a column of image paths
    ds.save_to_disk(str(tmp_path / "ds"))
    items, warnings = discover(dataset_name=str(tmp_path / "ds"))
    assert [(it.key, it.caption) for it in items] == [("dataset row 0 (here.png)", "here")]
    assert any("dataset row 1 (gone.png)" in w and "could not read" in w for w in warnings)


def test_imagefolder_through_load_dataset(tmp_path, monkeypatch):
    import datasets
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = tmp_path / "imgs"
    save_image(folder / "a.png", color=(10, 20, 30))
    save_image(folder / "b.png", color=(40, 50, 60))
    (folder / "metadata.jsonl").write_text(
        '{"file_name": "a.png", "text": "alpha"}\n{"file_name": "b.png", "text": "beta"}\n')

    items, _ = discover(dataset_name=str(folder))

    assert sorted((it.caption, load_rgb(it.load()).getpixel((0, 0))) for it in items) == [
        ("alpha", (10, 20, 30)), ("beta", (40, 50, 60))]
    assert {it.content_id for it in items} == {
        hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in ("a.png", "b.png")}


def test_unreachable_hub_and_missing_dataset_path(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as err:
        discover(dataset_name="nobody/no-such-dataset")
    assert "could not reach the Hugging Face hub" in str(err.value) and "local path" in str(err.value)

    with pytest.raises(DataError) as err:
        discover(dataset_name=str(tmp_path / "nope"))
    assert "no such folder" in str(err.value) and "nope" in str(err.value)


def test_max_train_samples_counts_usable_images(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")  # skipped, so it does not use up the budget
    for name in ("b.png", "c.png", "d.png"):
        save_image(tmp_path / name)
    items, warnings = discover(train_data_dir=str(tmp_path), max_train_samples=2)
    assert [it.key for it in items] == ["b.png", "c.png"]
    assert len([w for w in warnings if w.startswith("skipping")]) == 1


# ----------------------------------------------------------------------------- bad inputs

def test_missing_folder(tmp_path):
    with pytest.raises(DataError) as err:
        discover(train_data_dir=str(tmp_path / "absent"))
    assert str(tmp_path / "absent") in str(err.value) and "does not exist" in str(err.value)


def test_folder_without_images_says_what_it_found(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.txt").write_text("y")
    (tmp_path / "README.md").write_text("z")
    save_image(tmp_path / "nested" / "deep.png")
    with pytest.raises(DataError) as err:
        discover(train_data_dir=str(tmp_path))
    message = str(err.value)
    assert f"no images in {tmp_path}" in message
    assert "found 3 files (.md, .txt)" in message
    assert "nested/" in message and ".png" in message and ".webp" in message


def test_zero_byte_and_corrupt_files_are_skipped_with_a_warning_each(tmp_path):
    save_image(tmp_path / "good.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    png = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(png[:40])

    items, warnings = discover(train_data_dir=str(tmp_path))

    assert [it.key for it in items] == ["good.png"]
    skips = [w for w in warnings if w.startswith("skipping")]
    assert len(skips) == 3
    assert any("empty.png" in w and "empty (0 bytes)" in w for w in skips)
    assert any("corrupt.jpg" in w and "not a readable image" in w for w in skips)
    assert any("truncated.png" in w for w in skips)


def test_only_unreadable_images_is_an_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError) as err:
        discover(train_data_dir=str(tmp_path))
    assert "no usable images" in str(err.value) and "unreadable" in str(err.value)


def test_missing_captions_are_counted_in_one_warning(tmp_path):
    for name in ("a.png", "b.png", "c.png", "d.png"):
        save_image(tmp_path / name)
    (tmp_path / "c.txt").write_text("only c", encoding="utf-8")
    (tmp_path / "d.txt").write_text("   \n", encoding="utf-8")  # blank counts as missing
    _, warnings = discover(train_data_dir=str(tmp_path))
    assert len(caption_warnings(warnings)) == 1
    assert caption_warnings(warnings)[0].startswith("3 of 4 images have no caption (e.g. a.png)")


def test_both_sources_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="exactly one of train_data_dir"):
        validate({"train_data_dir": str(tmp_path), "dataset_name": "x/y"})


# ----------------------------------------------------------------------------- load_rgb, captions

def _pixels(img):
    out = load_rgb(img)
    assert out.mode == "RGB"
    return [out.getpixel((x, 0)) for x in range(out.width)]


def test_load_rgb_transparency_goes_on_white():
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)])
    assert _pixels(rgba) == [(255, 255, 255), (255, 0, 0), (127, 127, 127)]

    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (0, 255)])
    assert _pixels(la) == [(255, 255, 255), (0, 0, 0)]

    p = Image.new("P", (2, 1))
    p.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    p.putdata([0, 1])
    p.info["transparency"] = 0
    assert _pixels(p) == [(255, 255, 255), (0, 255, 0)]


def test_load_rgb_colour_modes():
    assert _pixels(Image.new("CMYK", (1, 1), (0, 0, 0, 0))) == [(255, 255, 255)]
    assert _pixels(Image.new("CMYK", (1, 1), (255, 0, 0, 0))) == [(0, 255, 255)]
    assert _pixels(Image.new("L", (1, 1), 77)) == [(77, 77, 77)]
    assert _pixels(Image.new("1", (1, 1), 1)) == [(255, 255, 255)]
    p = Image.new("P", (1, 1))
    p.putpalette([10, 20, 30] + [0] * 765)
    assert _pixels(p) == [(10, 20, 30)]


def test_load_rgb_scales_16_bit_instead_of_clipping(tmp_path):
    img = Image.fromarray(np.array([[65535, 0, 32768, 1000]], dtype=np.uint16))
    img.save(tmp_path / "deep.png")
    reopened = Image.open(tmp_path / "deep.png")
    assert reopened.mode == "I;16"
    assert [v[0] for v in _pixels(reopened)] == [255, 0, 128, 4]
    as_int32 = Image.fromarray(np.array([[65535, 0]], dtype=np.int32))
    assert as_int32.mode == "I" and [v[0] for v in _pixels(as_int32)] == [255, 0]
    as_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert [v[0] for v in _pixels(as_float)] == [0, 128, 255]


def test_load_rgb_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (20, 10), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 5, 5))  # red marker top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    img.save(tmp_path / "rotated.jpg", exif=exif, quality=95)

    out = load_rgb(Image.open(tmp_path / "rotated.jpg"))

    assert out.size == (10, 20)
    r, g, b = out.getpixel((8, 1))  # the marker is now at the top-right
    assert r > 200 and b < 60


def test_build_caption():
    assert build_caption("a dog", "sks") == "sks, a dog"
    assert build_caption("  a dog ", "  sks ") == "sks, a dog"
    assert build_caption(None, "sks") == "sks"
    assert build_caption("   ", "sks") == "sks"
    assert build_caption("a dog", "") == "a dog"
    assert build_caption(None, "") == ""
    assert build_caption("sks dog, on grass", "sks dog") == "sks dog, on grass"  # no doubled trigger


def test_tag_frequency_counts_images_not_repeats():
    items = [item_of(Image.new("RGB", (8, 8)), caption="Red, square", repeats=5),
             item_of(Image.new("RGB", (8, 8)), caption="red, circle"), item_of(Image.new("RGB", (8, 8)))]
    assert tag_frequency(items) == {"images": {"red": 2, "square": 1, "circle": 1}}


# ----------------------------------------------------------------------------- TrainDataset and collate

def test_train_dataset_shapes_range_caption_and_repeats():
    items = [item_of(Image.new("RGB", (192, 128), (255, 0, 0)), "wide", "a wide one", repeats=3),
             item_of(Image.new("RGB", (64, 160), (0, 0, 0)), "tall", None, repeats=2)]
    ds = TrainDataset(items, cfg_for(train_data_dir=".", trigger_word="sks", center_crop=True))
    assert len(ds) == 5
    first, last = ds[0], ds[4]
    assert first["pixel_values"].shape == (3, 64, 64) and first["pixel_values"].dtype == torch.float32
    assert first["pixel_values"][0].min() == 1.0 and first["pixel_values"][1].max() == -1.0
    assert last["pixel_values"].min() == -1.0 and last["pixel_values"].max() == -1.0
    assert [ds[i]["caption"] for i in range(5)] == ["sks, a wide one"] * 3 + ["sks"] * 2
    assert first["original_size"] == (128, 192) and last["original_size"] == (160, 64)
    assert first["crop_top_left"] == (0, 16)  # 192x128 -> 96x64, centred
    assert last["crop_top_left"] == (48, 0)  # 64x160 stays, centred
    assert first["target_size"] == (64, 64)
    with pytest.raises(IndexError):
        ds[5]


def test_random_crop_offsets_match_the_pixels():
    torch.manual_seed(0)
    # Shorter side already 64: no resampling blurs the coordinates.
    for w, h in ((96, 64), (64, 90)):
        ds = TrainDataset([item_of(coordinate_image(w, h))],
                          cfg_for(train_data_dir=".", image_interpolation_mode="nearest"))
        offsets = set()
        for _ in range(20):
            ex = ds[0]
            top, left = ex["crop_top_left"]
            assert 0 <= top <= h - 64 and 0 <= left <= w - 64
            px = to_uint8(ex["pixel_values"])
            assert tuple(px[0, 0, :2]) == (2 * left, 2 * top)
            assert tuple(px[63, 63, :2]) == (2 * (left + 63), 2 * (top + 63))
            offsets.add((top, left))
        assert len(offsets) > 5

    centre = TrainDataset([item_of(coordinate_image(64, 90))],
                          cfg_for(train_data_dir=".", center_crop=True, image_interpolation_mode="nearest"))[0]
    assert centre["crop_top_left"] == (13, 0)
    assert tuple(to_uint8(centre["pixel_values"])[0, 0, :2]) == (0, 26)


def test_flip_happens_before_the_crop_and_offsets_are_in_flipped_coordinates():
    img = coordinate_image(96, 64)
    ds = TrainDataset([item_of(img)], cfg_for(train_data_dir=".", random_flip=True,
                                              image_interpolation_mode="nearest"))
    torch.manual_seed(1)
    seen = set()
    for _ in range(30):
        ex = ds[0]
        top, left = ex["crop_top_left"]
        px = to_uint8(ex["pixel_values"])
        flipped = px[0, 0, 0] > px[0, 1, 0]  # x decreases to the right
        source_x = 95 - left if flipped else left
        assert px[0, 0, 0] == 2 * source_x
        seen.add(bool(flipped))
    assert seen == {True, False}


def test_resize_uses_the_shorter_side_and_the_interpolation_mode():
    board = Image.fromarray((np.indices((128, 256)).sum(0) % 2 * 255).astype(np.uint8)).convert("RGB")
    for mode, expect_gray in (("nearest", False), ("bilinear", True)):
        ex = TrainDataset([item_of(board)], cfg_for(train_data_dir=".", center_crop=True,
                                                    image_interpolation_mode=mode))[0]
        values = set(np.unique(to_uint8(ex["pixel_values"])))
        assert ex["original_size"] == (128, 256) and ex["crop_top_left"] == (0, 32)
        assert (values - {0, 255} != set()) == expect_gray


def test_collate_and_a_dataloader(tmp_path):
    for name in ("a.png", "b.png", "c.png"):
        save_image(tmp_path / name, size=(80, 64))
    cfg = cfg_for(train_data_dir=str(tmp_path), trigger_word="t")
    ds = TrainDataset(discover_items(cfg, lambda m: None), cfg)
    pickle.loads(pickle.dumps(ds))  # DataLoader workers need a picklable dataset
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate)))
    assert batch["pixel_values"].shape == (3, 3, 64, 64)
    assert batch["captions"] == ["t"] * 3
    for name in ("original_sizes", "crop_top_lefts", "target_sizes"):
        assert batch[name].dtype == torch.long and batch[name].shape == (3, 2)
    assert batch["original_sizes"].tolist() == [[64, 80]] * 3
    assert batch["target_sizes"].tolist() == [[64, 64]] * 3

    latents = collate([{"latents": torch.ones(4, 8, 8), "caption": "c", "original_size": (1, 2),
                        "crop_top_left": (0, 0), "target_size": (64, 64)}] * 2)
    assert latents["latents"].shape == (2, 4, 8, 8) and "pixel_values" not in latents


# ----------------------------------------------------------------------------- latent cache

@pytest.fixture(scope="module")
def vae():
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    model = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32,
                          layers_per_block=1, sample_size=64).eval()
    return model


def _encode_with(vae, counter=None):
    def encode(px):
        if counter is not None:
            counter.append(px.shape[0])
        return vae.encode(px).latent_dist.mode()
    return encode


@pytest.fixture
def cache_items(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, size in enumerate([(96, 64), (64, 100), (70, 70)]):
        img = coordinate_image(*size)
        img.putpixel((0, 0), (255, 255, i * 50))  # distinct content per image
        img.save(folder / f"{i}.png")
    return folder


def test_latent_cache_reuses_and_matches_fresh_encodings(tmp_path, cache_items, vae):
    cfg = cfg_for(train_data_dir=str(cache_items), cache_latents=True, trigger_word="sks")
    items = discover_items(cfg, lambda m: None)
    cache = LatentCache(tmp_path / "cache", "tiny-vae")
    batches, progress = [], []

    assert cache.prepare(items, cfg, _encode_with(vae, batches), batch_size=2,
                         progress=lambda done, total: progress.append((done, total))) == 3
    assert batches == [2, 1] and progress == [(2, 3), (3, 3)]
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 3 and all(len(n) == 64 + len(".safetensors") for n in files)  # no temp files
    assert cache.prepare(items, cfg, _encode_with(vae, batches)) == 0 and batches == [2, 1]
    assert LatentCache(tmp_path / "cache", "tiny-vae").prepare(items, cfg, _encode_with(vae)) == 0

    cached = cache.dataset(items, cfg)
    fresh = TrainDataset(items, cfg.replace(center_crop=True))  # the cache freezes the crop to the centre
    assert len(cached) == len(fresh) == 3
    for i in range(3):
        c, f = cached[i], fresh[i]
        with torch.no_grad():
            expected = _encode_with(vae)(f["pixel_values"][None])[0]
        assert c["latents"].shape == (4, 32, 32)
        torch.testing.assert_close(c["latents"], expected, atol=1e-5, rtol=1e-4)
        assert (c["original_size"], c["crop_top_left"], c["target_size"], c["caption"]) == (
            f["original_size"], f["crop_top_left"], f["target_size"], f["caption"])
    assert cached[1]["original_size"] == (100, 64) and cached[1]["crop_top_left"] == (18, 0)
    assert collate([cached[0], cached[1]])["latents"].shape == (2, 4, 32, 32)

    assert cache.prepare(items, cfg.replace(resolution=72), _encode_with(vae)) == 3  # new resolution
    assert cache.prepare(items, cfg.replace(image_interpolation_mode="nearest"), _encode_with(vae)) == 3
    assert LatentCache(tmp_path / "cache", "other-vae").prepare(items, cfg, _encode_with(vae)) == 3


def test_latent_cache_keeps_both_flips(tmp_path, cache_items, vae):
    cfg = cfg_for(train_data_dir=str(cache_items), cache_latents=True, random_flip=True)
    items = discover_items(cfg, lambda m: None)[:1]
    cache = LatentCache(tmp_path / "cache", "tiny-vae")
    assert cache.prepare(items, cfg, _encode_with(vae)) == 2
    assert cache.prepare(items, cfg, _encode_with(vae)) == 0
    assert cache.prepare(items, cfg.replace(random_flip=False), _encode_with(vae)) == 0  # unflipped is shared

    img = load_rgb(items[0].load())
    expected = {}
    for flip in (False, True):
        prepared = prepare_image(img, 64, cfg.image_interpolation_mode, flip, center=True)
        with torch.no_grad():
            expected[flip] = _encode_with(vae)(prepared.pixels[None])[0]
    assert not torch.allclose(expected[False], expected[True], atol=1e-3)

    torch.manual_seed(0)
    seen = set()
    ds = cache.dataset(items, cfg)
    for _ in range(20):
        latents = ds[0]["latents"]
        match = [f for f, e in expected.items() if torch.allclose(latents, e, atol=1e-5, rtol=1e-4)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == {False, True}


def test_latent_cache_encodes_identical_images_once_and_reports_missing_entries(tmp_path, vae):
    img = Image.new("RGB", (64, 64), (9, 9, 9))
    items = [item_of(img, "a"), item_of(img, "b"), item_of(Image.new("RGB", (64, 64)), "c")]
    cfg = cfg_for(train_data_dir=".", cache_latents=True)
    cache = LatentCache(tmp_path / "cache", "tiny-vae")
    with pytest.raises(DataError, match="no cached latents for a"):
        cache.dataset(items, cfg)[0]
    assert cache.prepare(items, cfg, _encode_with(vae)) == 2
    torch.testing.assert_close(cache.dataset(items, cfg)[1]["latents"], cache.dataset(items, cfg)[0]["latents"])

