"""Bounds on what a dataset may cost (issue #13): uploads and zips, repeats, huge images, metadata file
names that leave the folder, a truncated image, and Load's memory. Real files, no mocks."""
from __future__ import annotations

import json
import struct
import tracemalloc
import zipfile

import pytest
from PIL import Image

from engine.config import ConfigError
from engine.data import DataError, Item, TrainDataset, discover_items
from engine.data.checks import check_dataset
from engine.data.dataset import MAX_EPOCH_EXAMPLES
from engine.data.folder import MAX_CAPTION_BYTES, MAX_FOLDER_REPEATS
from engine.data.images import MAX_IMAGE_PIXELS
from engine.data.thumbnails import thumbnail
from engine.data.uploads import UploadLimits, create_dataset
from tests.test_data import cfg_for, discover, save_image
from ui import dataset_tab


# ----------------------------------------------------------------------------- uploads (S4)

def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _png(tmp_path, name="a.png") -> bytes:
    return save_image(tmp_path / "src" / name).read_bytes()


def _nothing_made(datasets):
    assert not datasets.exists() or list(datasets.iterdir()) == [], "a refused upload left files behind"


def test_a_zip_that_expands_too_far_is_refused_before_extracting(tmp_path):
    bomb = _zip(tmp_path / "bomb.zip", {"a.png": _png(tmp_path), "b.png": bytes(8 << 20)})  # 8 MiB of zeros
    datasets = tmp_path / "datasets"
    with pytest.raises(DataError) as err:
        create_dataset(datasets, "bomb", [bomb])
    assert "bomb.zip would expand" in str(err.value) and ":1 is allowed" in str(err.value)
    _nothing_made(datasets)
    # the ratio is a setting: allowed, the same zip unpacks
    result = create_dataset(datasets, "allowed", [bomb], UploadLimits(max_ratio=1e6))
    assert sorted(result.added) == ["a.png", "b.png"]


def test_an_upload_is_capped_in_bytes_and_files_settable_from_the_environment(tmp_path, monkeypatch):
    files = [save_image(tmp_path / "src" / f"{i}.png") for i in range(4)]
    datasets = tmp_path / "datasets"
    monkeypatch.setenv("ADAPTOR_STUDIO_UPLOAD_MAX_FILES", "3")
    with pytest.raises(DataError) as err:
        create_dataset(datasets, "many", files)
    assert "at most" in str(err.value) and "3 files" in str(err.value)
    archive = _zip(tmp_path / "four.zip", {f"{i}.png": f.read_bytes() for i, f in enumerate(files)})
    with pytest.raises(DataError):
        create_dataset(datasets, "many", [archive])
    monkeypatch.delenv("ADAPTOR_STUDIO_UPLOAD_MAX_FILES")
    monkeypatch.setenv("ADAPTOR_STUDIO_UPLOAD_MAX_BYTES", str(files[0].stat().st_size * 2))
    with pytest.raises(DataError) as err:
        create_dataset(datasets, "big", files)
    assert "MiB" in str(err.value)
    _nothing_made(datasets)
    monkeypatch.setenv("ADAPTOR_STUDIO_UPLOAD_MAX_BYTES", "lots")
    with pytest.raises(DataError, match="ADAPTOR_STUDIO_UPLOAD_MAX_BYTES = 'lots' is not a number"):
        UploadLimits.from_env()
    assert UploadLimits() == UploadLimits(max_bytes=2 << 30, max_files=20_000, max_ratio=100.0)


def _patch_sizes(archive, declared: int) -> None:
    """Make every header of a one-member zip declare `declared` bytes (a forged, lying zip)."""
    data = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        at = data.find(signature)
        data[at + offset: at + offset + 4] = struct.pack("<I", declared)
    archive.write_bytes(bytes(data))


def test_a_zip_whose_header_lies_about_its_size_is_refused(tmp_path):
    archive = _zip(tmp_path / "liar.zip", {"a.png": _png(tmp_path) + bytes(64 << 10)})
    _patch_sizes(archive, 100)
    datasets = tmp_path / "datasets"
    with pytest.raises(DataError) as err:
        create_dataset(datasets, "liar", [archive])
    assert "liar.zip: a.png" in str(err.value)
    _nothing_made(datasets)


def test_load_reads_files_a_block_at_a_time(tmp_path):
    """Load hashes and checks each image without holding it whole, and reads at most a bounded caption."""
    folder = tmp_path / "big"
    save_image(folder / "small.png")
    huge = folder / "huge.png"
    with open(huge, "wb") as f:  # a real PNG followed by 96 MiB (viewers stop at its end)
        f.write((folder / "small.png").read_bytes())
        f.truncate(96 << 20)
    (folder / "huge.txt").write_text("a caption " * (MAX_CAPTION_BYTES // 5))
    tracemalloc.start()
    try:
        report = check_dataset(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"Load held {peak / 2**20:.0f} MiB at once"
    assert report.sizes == {"huge.png": (16, 16), "small.png": (16, 16)}
    caption = next(i for i in report.images if i.key == "huge.png").training_caption
    assert len(caption) <= MAX_CAPTION_BYTES
    assert any("huge.txt is larger than" in p["detail"] for p in report.problems)


# ----------------------------------------------------------------------------- repeats and huge images (S5)

def test_kohya_repeats_are_bounded_with_a_clear_error(tmp_path):
    save_image(tmp_path / "1000000000_star" / "a.png")
    with pytest.raises(DataError) as err:
        discover(train_data_dir=str(tmp_path))
    assert "1000000000_star" in str(err.value) and f"at most {MAX_FOLDER_REPEATS}" in str(err.value)
    status = dataset_tab.load_folder(str(tmp_path), ".txt", 64)[2]
    assert status.startswith("**Error:**") and "1000000000_star" in status


def test_an_epoch_of_too_many_examples_is_refused_before_it_is_built():
    img = Image.new("RGB", (64, 64))
    half = MAX_EPOCH_EXAMPLES // 2 + 1
    items = [Item(key=k, load=lambda: img, caption=None, repeats=half, size=(64, 64)) for k in "ab"]
    with pytest.raises(DataError, match="examples per epoch"):
        TrainDataset(items, cfg_for(train_data_dir="."))


def test_an_image_above_the_pixel_limit_is_skipped_with_a_named_warning(tmp_path):
    save_image(tmp_path / "fine.png")
    Image.new("1", (12000, 12000)).save(tmp_path / "huge.png")  # 144 megapixels, 18 KB on disk
    items, warnings = discover(train_data_dir=str(tmp_path))
    assert [it.key for it in items] == ["fine.png"]
    assert any(w.startswith("skipping huge.png: 12000x12000 px is 144 megapixels, above the limit of 120")
               for w in warnings), warnings
    problems = {(p["file"], p["problem"]) for p in check_dataset(tmp_path).problems}
    assert ("huge.png", "too large") in problems
    assert thumbnail(tmp_path / "huge.png", tmp_path / "thumbs") is None  # never decoded for the gallery
    assert Image.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS == 120_000_000  # Pillow's own guard, for other readers


# ----------------------------------------------------------------------------- metadata and broken images

@pytest.mark.parametrize("bad", ["ABSOLUTE", "../outside/x.png", "sub/../../outside/x.png"])
def test_metadata_file_names_outside_the_folder_are_refused(tmp_path, bad):
    outside = save_image(tmp_path / "outside" / "x.png")
    data = tmp_path / "data"
    save_image(data / "a.png")
    name = str(outside) if bad == "ABSOLUTE" else bad
    rows = [{"file_name": "a.png", "text": "fine"}, {"file_name": name, "text": "escapes"}]
    (data / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError) as err:
        discover(train_data_dir=str(data))
    assert "metadata.jsonl line 2" in str(err.value) and repr(name) in str(err.value)


def test_metadata_csv_names_the_line_too(tmp_path):
    save_image(tmp_path / "a.png")
    (tmp_path / "metadata.csv").write_text("file_name,text\na.png,fine\n/etc/hostname.png,escapes\n")
    with pytest.raises(DataError, match=r"metadata.csv line 3: file_name '/etc/hostname.png' is an absolute"):
        discover(train_data_dir=str(tmp_path))


def test_a_truncated_png_gets_a_warning_and_the_rest_loads(tmp_path, monkeypatch):
    """A small truncated PNG used to fail the whole Load with AssertionError in thumbnails.py."""
    monkeypatch.setattr(dataset_tab, "THUMBNAIL_CACHE", tmp_path / "thumbs")
    save_image(tmp_path / "ok.png")
    whole = save_image(tmp_path / "src" / "cut.png", size=(64, 64)).read_bytes()
    (tmp_path / "cut.png").write_bytes(whole[: len(whole) * 2 // 3])
    gallery, keys, status, problems, _, _ = dataset_tab.load_folder(str(tmp_path), ".txt", 8)
    assert keys == ["cut.png", "ok.png"] and status.startswith("Loaded 2 images")
    assert gallery[0][1] == "cut.png: cannot be opened"
    assert ["cut.png", "unreadable"] == problems["data"][0][:2] and "cut.png" in problems["data"][0][2]
    items, warnings = discover(train_data_dir=str(tmp_path))
    assert [it.key for it in items] == ["ok.png"] and any(w.startswith("skipping cut.png") for w in warnings)


def test_the_caption_extension_comes_from_a_fixed_set(tmp_path):
    save_image(tmp_path / "a.png")
    for bad in ("./../../etc/passwd", ".png", ".sh", "txt/../x"):
        with pytest.raises(ConfigError, match="is not one of .txt, .caption, .tags"):
            cfg_for(train_data_dir=str(tmp_path), caption_extension=bad)
    assert cfg_for(train_data_dir=str(tmp_path), caption_extension="caption").caption_extension == ".caption"
    items = discover_items(cfg_for(train_data_dir=str(tmp_path), caption_extension=".tags"), [].append)
    assert [it.key for it in items] == ["a.png"]
