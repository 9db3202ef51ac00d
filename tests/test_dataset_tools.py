"""The Dataset tab's engine: caption listing and editing, bulk changes with preview and undo, dataset
checks, tag frequency, and making a dataset from uploads (zip slip kept out)."""
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from engine.data import caption_files as cf
from engine.data.checks import caption_frequency, check_dataset
from engine.data.items import DataError
from engine.data.uploads import create_dataset

from conftest import ROOT, make_images

TOY_STAR = ROOT / "examples" / "datasets" / "toy-star"


@pytest.fixture
def star(tmp_path):
    return Path(shutil.copytree(TOY_STAR, tmp_path / "toy-star"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and ".caption_backups" not in p.parts}


def test_list_images_pairs_sidecars(star):
    (star / "0003.txt").unlink()
    images, warnings = cf.list_images(star)
    assert [i.key for i in images] == [f"000{n}.png" for n in range(8)] and warnings == []
    assert images[0].caption == "a red star on a white background"
    assert images[3].caption is None and images[3].caption_path == star / "0003.txt"


def test_previews_write_nothing(star):
    before = snapshot(star)
    rows = cf.preview_bulk(star, "add trigger word", "sks")
    assert len(rows) == 8 and rows[0].file == "0000.txt"
    assert rows[0].before == "a red star on a white background"
    assert rows[0].after == "sks, a red star on a white background"
    assert cf.preview_bulk(star, "add prefix", "photo of")[0].after == "photo of a red star on a white background"
    assert cf.preview_bulk(star, "add suffix", "at night")[0].after == "a red star on a white background at night"
    assert cf.preview_bulk(star, "add suffix", ", 4k")[0].after == "a red star on a white background, 4k"
    replaced = cf.preview_bulk(star, "find and replace", "star", "moon")
    assert len(replaced) == 8 and replaced[0].after == "a red moon on a white background"
    assert [r.file for r in cf.preview_bulk(star, "find and replace", "red", "blue")] == ["0000.txt", "0006.txt"]
    assert snapshot(star) == before
    with pytest.raises(DataError, match="needs some text"):
        cf.preview_bulk(star, "add prefix", "  ")


def test_trigger_added_once(star):
    (star / "0001.txt").write_text("SKS, a star")
    changes, _ = cf.apply_bulk(star, "add trigger word", "sks")
    assert "0001.txt" not in [c.file for c in changes] and len(changes) == 7
    assert (star / "0000.txt").read_text() == "sks, a red star on a white background"
    assert cf.preview_bulk(star, "add trigger word", "sks") == []
    changes, backup = cf.apply_bulk(star, "add trigger word", "sks")
    assert changes == [] and backup is None


def test_remove_tag_exact_match(star):
    (star / "0000.txt").write_text("sks,  red   star , red, star background\n")
    (star / "0001.txt").write_text("a red star")
    rows = {r.file: r for r in cf.preview_bulk(star, "remove tag", "red  star")}
    assert rows["0000.txt"].after == "sks, red, star background"
    assert "0001.txt" not in rows  # "a red star" is not the tag "red star"
    assert cf.transform_caption("remove tag", "red, red", "red") is None  # nothing left: no caption


def test_apply_then_undo_restores_exact_bytes_and_removes_created(star):
    (star / "0002.txt").write_bytes(b"a star\r\n  with  a newline\r\n")  # odd bytes must come back as they were
    (star / "0005.txt").unlink()
    (star / "0006.txt").rename(star / "0006.caption")  # the fallback extension is edited in place
    before = snapshot(star)

    changes, backup = cf.apply_bulk(star, "add trigger word", "sks")
    assert len(changes) == 8 and backup.parent == star / cf.BACKUP_DIR
    assert (star / "0005.txt").read_text() == "sks"  # created for the uncaptioned image
    assert (star / "0006.caption").read_text().startswith("sks, ") and not (star / "0006.txt").exists()
    assert (star / "0002.txt").read_bytes() == b"sks, a star with a newline"
    assert snapshot(star) != before

    restored, removed, what = cf.undo_bulk(star)
    assert removed == ["0005.txt"] and len(restored) == 7 and "add trigger word" in what
    assert snapshot(star) == before
    assert not backup.exists()
    with pytest.raises(DataError, match="no bulk caption change to undo"):
        cf.undo_bulk(star)


def test_undo_takes_newest_first(star):
    original = snapshot(star)
    cf.apply_bulk(star, "add trigger word", "sks")
    after_first = snapshot(star)
    cf.apply_bulk(star, "find and replace", "star", "moon")
    assert (star / "0000.txt").read_text() == "sks, a red moon on a white background"
    cf.undo_bulk(star)
    assert snapshot(star) == after_first
    cf.undo_bulk(star)
    assert snapshot(star) == original


def test_save_caption_one_image(star):
    written = cf.save_caption(star, "0004.png", "  sks, a new caption \n")
    assert written == star / "0004.txt" and written.read_bytes() == b"sks, a new caption"
    with pytest.raises(DataError, match="nope.png is not one of the images"):
        cf.save_caption(star, "nope.png", "x")
    with pytest.raises(DataError, match="missing; give the folder"):
        cf.list_images(star / "nowhere")


def test_kohya_folder_text_is_the_base_of_bulk_changes(tmp_path):
    make_images(tmp_path / "data" / "5_sks dog", n=2, captions=False)
    rows = cf.preview_bulk(tmp_path / "data", "add suffix", "on grass")
    assert [r.file for r in rows] == ["5_sks dog/img0.txt", "5_sks dog/img1.txt"]
    assert rows[0].before == "sks dog" and rows[0].after == "sks dog on grass"


def test_checks_find_each_problem(tmp_path):
    data = make_images(tmp_path / "data", n=3, size=(96, 80))
    (data / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.new("RGB", (200, 40), "red").save(data / "tiny.png")
    (data / "tiny.txt").write_text("a thin strip")
    shutil.copy(data / "img0.png", data / "copy.png")
    (data / "copy.txt").write_text("a copy")
    (data / "img2.txt").unlink()

    report = check_dataset(data, min_side=64)
    found = {(p["file"], p["problem"]) for p in report.problems}
    assert ("corrupt.png", "unreadable") in found
    assert ("img2.png", "missing caption") in found and ("img1.png", "missing caption") not in found
    assert ("tiny.png", "tiny image") in found and ("img0.png", "tiny image") not in found
    tiny = next(p for p in report.problems if p["problem"] == "tiny image")
    assert "200x40" in tiny["detail"] and "64 px" in tiny["detail"]
    assert report.duplicates == [["copy.png", "img0.png"]]
    assert any(p["problem"] == "duplicate" and "copy.png, img0.png" in p["detail"] for p in report.problems)
    summary = {r["measure"]: r["value"] for r in report.summary}
    assert summary["images"] == "6" and summary["readable images"] == "5"
    assert summary["width (px)"] == "min 96, median 96, max 200"
    assert summary["aspect ratios (w/h)"] == "1.20 (landscape): 4, 5.00 (landscape): 1"
    assert not any(p["problem"] == "tiny image" for p in check_dataset(data, min_side=30).problems)


def test_checks_on_the_toy_dataset_are_clean(star):
    report = check_dataset(star)
    assert report.problems == [] and len(report.images) == 8
    assert {r["measure"]: r["value"] for r in report.summary}["aspect ratios (w/h)"] == "1.00 (square): 8"


def test_tag_and_word_frequency(tmp_path):
    data = make_images(tmp_path / "data", n=3)
    for i, caption in enumerate(["sks, Red Star, night", "sks, red star", "a red dog, night sky"]):
        (data / f"img{i}.txt").write_text(caption)
    rows = {(r["kind"], r["text"]): r["images"] for r in caption_frequency(cf.list_images(data)[0])}
    assert rows[("tag", "sks")] == 2 and rows[("tag", "red star")] == 2 and rows[("tag", "night")] == 1
    assert rows[("word", "red")] == 3 and rows[("word", "night")] == 2 and rows[("word", "dog")] == 1
    assert ("tag", "night sky") in rows and ("word", "sky") in rows


def _zip(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def test_upload_zip_keeps_escaping_members_out(tmp_path):
    png = (TOY_STAR / "0000.png").read_bytes()
    archive = _zip(tmp_path / "up.zip", {
        "photos/a.png": png, "photos/a.txt": b"a star", "photos/notes.md": b"x",
        "../evil.txt": b"evil", "photos/../../evil2.txt": b"evil", "/abs.txt": b"evil",
        "__MACOSX/photos/._a.png": b"junk"}, link="photos/link.png")
    datasets = tmp_path / "home" / "datasets"
    result = create_dataset(datasets, "my-star", [archive])
    assert result.folder == datasets / "my-star"
    assert sorted(result.added) == ["a.png", "a.txt"]  # the single top folder is dropped
    assert sorted(p.name for p in result.folder.iterdir()) == ["a.png", "a.txt"]
    assert not (tmp_path / "home" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not list(tmp_path.rglob("evil*")) and not list(tmp_path.rglob("abs.txt"))
    skipped = "\n".join(result.skipped)
    for name in ("../evil.txt", "evil2.txt", "/abs.txt", "notes.md", "link.png", "__MACOSX"):
        assert name in skipped
    assert [p.name for p in datasets.iterdir()] == ["my-star"]  # no temporary folder left behind


def test_upload_files_and_refusals(tmp_path):
    datasets = tmp_path / "datasets"
    src = make_images(tmp_path / "src", n=2)
    (src / "readme.pdf").write_bytes(b"%PDF")
    files = sorted(src.iterdir())
    result = create_dataset(datasets, "dogs", files)
    assert sorted(result.added) == ["img0.png", "img0.txt", "img1.png", "img1.txt"]
    assert any("readme.pdf" in m for m in result.skipped)
    assert cf.list_images(result.folder)[0][1].caption == "a green square"
    with pytest.raises(DataError, match="already exists"):
        create_dataset(datasets, "dogs", files)
    for bad in ("../up", "a/b", "..", ".hidden", ""):
        with pytest.raises(DataError):
            create_dataset(datasets, bad, files)
    with pytest.raises(DataError, match="no images"):
        create_dataset(datasets, "text-only", [src / "img0.txt"])
    assert sorted(p.name for p in datasets.iterdir()) == ["dogs"]


def test_tab_builds_and_loads_the_default(star, tmp_path, monkeypatch):
    gr = pytest.importorskip("gradio")
    from ui import dataset_tab
    from ui.studio import Studio

    monkeypatch.setattr(dataset_tab, "THUMBNAIL_CACHE", tmp_path / "thumbs")

    studio = Studio(home=tmp_path / "home", default_dataset=star)
    with gr.Blocks() as demo:
        with gr.Tab("Dataset"):
            dataset_tab.build(studio)
    ids = {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    assert {"dataset-path", "dataset-gallery", "dataset-caption", "dataset-bulk-apply", "dataset-bulk-undo",
            "dataset-checks", "dataset-tags", "dataset-upload", "dataset-upload-name"} <= ids
    assert studio.shared["dataset_path"].value == str(star)
    gallery, keys, status, problems, summary, tags = dataset_tab.load_folder(str(star), ".txt", 64)
    assert len(gallery) == 8 and keys[0] == "0000.png" and "Loaded 8 images" in status
    assert gallery[0][1] == "0000.png: a red star on a white background" and Path(gallery[0][0]).is_file()
    assert problems["data"] == [] and tags["data"][0][:2] == ["tag", "an orange star on a black background"]
    assert Path(gallery[0][0]).parent == tmp_path / "thumbs"
    click = gr.SelectData(None, {"index": 3, "value": None})
    key, text, _, folder, stamp = dataset_tab.select_image(str(star), ".txt", keys, click)
    assert (key, text, folder) == ("0003.png", "a green star on a pink background", str(star.resolve()))
    saved, new_stamp, _ = dataset_tab.save_caption(folder, ".txt", key, stamp, "sks, green")
    assert saved == f"Saved `0003.txt` in `{folder}`." and new_stamp != stamp
    assert (star / "0003.txt").read_text() == "sks, green"
    refused = dataset_tab.save_caption(folder, ".txt", key, stamp, "from a stale editor")[0]  # opened before
    assert "changed on disk" in refused and (star / "0003.txt").read_text() == "sks, green"
