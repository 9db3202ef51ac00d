"""Captioning a folder end to end with the tiny WD14 tagger (a real ONNX model run by onnxruntime) and the
tiny BLIP: the CLI in a real subprocess, the modes, bad images, preview, cancel, and undo."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from engine.caption import CaptionError, CaptionOptions
from engine.caption.job import CaptionJob
from engine.caption.run import caption_folder, combine
from engine.caption.wd14 import WD14Tagger
from engine.data import caption_files
from engine.paths import PROJECT_ROOT
from tests.tiny_generative import make_tiny_blip
from tests.tiny_tagger import make_tiny_tagger

COLOURS = {"red": (230, 20, 20), "green": (20, 200, 40), "white": (255, 255, 255)}


@pytest.fixture(scope="module")
def tagger(tmp_path_factory) -> Path:
    return make_tiny_tagger(tmp_path_factory.mktemp("tagger"))


def make_folder(root: Path, colours=COLOURS, captions: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, rgb in colours.items():
        # square: the tagger pads other shapes with white, which changes its tags
        Image.new("RGB", (40, 40), rgb).save(root / f"{name}.png")
    for name, text in (captions or {}).items():
        (root / f"{name}.txt").write_text(text)
    return root


def expected_tags(tagger: Path, colour: str, **opts) -> str:
    """What the tagger itself says of one solid image: the runner must write exactly this."""
    t = WD14Tagger(CaptionOptions(captioner="wd14", model=str(tagger), **opts))
    try:
        return t.caption([Image.new("RGB", (40, 40), COLOURS[colour])])[0]
    finally:
        t.close()


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, "-m", "engine.caption", *args], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def wd14(tagger: Path, **kw) -> CaptionOptions:
    return CaptionOptions(captioner="wd14", model=str(tagger), **kw)


def test_cli_overwrites_every_caption_with_trigger_and_reports_progress(tmp_path, tagger):
    folder = make_folder(tmp_path / "ds", captions={"red": "old words"})
    r = run_cli(str(folder), "--captioner", "wd14", "--model", str(tagger), "--trigger", "sks",
                "--batch-size", "2")
    assert r.returncode == 0, r.stderr + r.stdout
    for colour in COLOURS:
        text = (folder / f"{colour}.txt").read_text()
        assert text == f"sks, {expected_tags(tagger, colour)}", colour
    assert "old words" not in (folder / "red.txt").read_text()
    assert "3/3" in r.stdout and "done: 3 captions written" in r.stdout  # the terminal progress
    assert "tag frequency" in r.stdout


def test_cli_events_are_json_lines_and_undo_restores(tmp_path, tagger):
    folder = make_folder(tmp_path / "ds", captions={"green": "a green thing"})
    r = run_cli(str(folder), "--captioner", "wd14", "--model", str(tagger), "--events")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["type"] for e in events][0] == "start" and events[-1]["type"] == "done"
    assert [e["done"] for e in events if e["type"] == "caption"] == [1, 2, 3]
    assert events[0]["backup"] and Path(events[0]["backup"]).is_dir()
    u = run_cli(str(folder), "--undo")
    assert u.returncode == 0, u.stderr
    assert (folder / "green.txt").read_text() == "a green thing"
    assert not (folder / "red.txt").exists() and not (folder / "white.txt").exists()


def test_skip_mode_leaves_captioned_images_alone(tmp_path, tagger):
    folder = make_folder(tmp_path / "ds", captions={"red": "my own caption"})
    out = caption_folder(folder, wd14(tagger, mode="skip"))
    assert (folder / "red.txt").read_text() == "my own caption"
    assert sorted(out.written) == ["green.txt", "white.txt"]
    assert (folder / "green.txt").read_text() == expected_tags(tagger, "green")


def test_append_mode_adds_only_new_tags(tmp_path, tagger):
    first_tag = expected_tags(tagger, "red").split(", ")[0]
    folder = make_folder(tmp_path / "ds", captions={"red": f"photo of sks, {first_tag}"})
    caption_folder(folder, wd14(tagger, mode="append"))
    text = (folder / "red.txt").read_text()
    assert text.startswith(f"photo of sks, {first_tag}")
    tags = [t.strip() for t in text.split(",")]
    assert tags.count(first_tag) == 1  # not added a second time
    assert set(expected_tags(tagger, "red").split(", ")) <= set(tags)
    assert (folder / "green.txt").read_text() == expected_tags(tagger, "green")  # nothing to append to


def test_combine_puts_trigger_first_once():
    assert combine("overwrite", "old", "a cat", "sks") == "sks, a cat"
    assert combine("append", "sks, old", "new, old", "sks") == "sks, old, new"
    assert combine("overwrite", None, "  a   cat ", "") == "a cat"


def test_bad_images_are_skipped_with_a_message_naming_them(tmp_path, tagger):
    folder = make_folder(tmp_path / "ds")
    (folder / "broken.png").write_bytes(b"not a png at all")
    events = []
    out = caption_folder(folder, wd14(tagger), emit=lambda t, **f: events.append((t, f)))
    assert not (folder / "broken.txt").exists()
    assert len(out.skipped) == 1 and out.skipped[0].startswith("broken.png:")
    assert "broken.png" in out.skipped[0] and "could not read image" in out.skipped[0]
    assert sorted(out.written) == ["green.txt", "red.txt", "white.txt"]
    assert [f["image"] for t, f in events if t == "skipped"] == ["broken.png"]


def test_preview_writes_nothing(tmp_path, tagger):
    folder = make_folder(tmp_path / "ds", captions={"red": "keep me"})
    out = caption_folder(folder, wd14(tagger, trigger="sks"), preview=2)
    assert out.backup is None and out.written == []
    assert [c["image"] for c in out.captions] == ["green.png", "red.png"]
    assert out.captions[1]["before"] == "keep me" and out.captions[1]["after"].startswith("sks, ")
    assert (folder / "red.txt").read_text() == "keep me" and not (folder / "green.txt").exists()
    assert caption_files.latest_backup(folder) is None


def test_stop_between_batches_keeps_what_was_written_and_undo_restores(tmp_path, tagger):
    colours = {f"img{i:02d}": (i * 20, 100, 200 - i * 20) for i in range(8)}
    folder = make_folder(tmp_path / "ds", colours, captions={"img05": "hand written"})
    batches = []
    out = caption_folder(folder, wd14(tagger, batch_size=2), emit=lambda t, **f: batches.append(t),
                         should_stop=lambda: batches.count("caption") >= 4)
    assert out.cancelled and len(out.written) == 4
    assert batches[-1] == "cancelled"
    for c in out.captions:  # whole captions, as the tagger gave them
        assert (folder / c["file"]).read_text() == c["after"]
    assert (folder / "img05.txt").read_text() == "hand written"  # never reached
    restored, removed, _ = caption_files.undo_bulk(folder)
    assert sorted(removed) == sorted(f"{k}.txt" for k in colours if k != "img05")
    assert not any((folder / f"{k}.txt").exists() for k in colours if k != "img05")
    assert (folder / "img05.txt").read_text() == "hand written"


def test_job_cancel_in_a_subprocess_keeps_written_captions(tmp_path, tagger):
    # enough images that the run is still going when the first caption arrives
    colours = {f"img{i:03d}": (i % 256, (3 * i) % 256, 90) for i in range(400)}
    folder = make_folder(tmp_path / "ds", colours)
    job = CaptionJob(folder, wd14(tagger, batch_size=1))
    while job.running() and job.state().done < 3:
        time.sleep(0.01)
    job.cancel()
    s = job.state()
    assert s.status == "cancelled", s
    written = sorted(p.name for p in folder.glob("*.txt"))
    assert 3 <= len(written) < 400
    assert len(written) == len(s.captions)
    for c in s.captions:
        assert (folder / c["file"]).read_text() == c["caption"]
    caption_files.undo_bulk(folder)
    assert not list(folder.glob("*.txt"))


def test_job_reports_a_missing_model_as_failed(tmp_path):
    folder = make_folder(tmp_path / "ds")
    s = CaptionJob(folder, CaptionOptions(captioner="wd14", model=str(tmp_path / "nowhere"))).wait(120)
    assert s.status == "failed"
    assert str(tmp_path / "nowhere") in s.error
    assert not list(folder.glob("*.txt"))


def test_blip_captions_a_folder(tmp_path):
    blip = make_tiny_blip(tmp_path / "blip")
    folder = make_folder(tmp_path / "ds")
    r = run_cli(str(folder), "--captioner", "blip", "--model", str(blip), "--trigger", "sks",
                "--max-length", "8", "--num-beams", "2")
    assert r.returncode == 0, r.stderr + r.stdout
    for colour in COLOURS:
        text = (folder / f"{colour}.txt").read_text()
        assert text.startswith("sks, ") and len(text) > len("sks, ")


def test_bad_option_values_name_the_option():
    with pytest.raises(CaptionError, match="general_threshold"):
        caption_folder("/tmp", wd14(Path("/x"), general_threshold=2.0))
    with pytest.raises(CaptionError, match="mode"):
        caption_folder("/tmp", CaptionOptions(mode="replace"))
    r = run_cli("/nonexistent-folder-xyz", "--captioner", "wd14")
    assert r.returncode == 1 and "/nonexistent-folder-xyz" in r.stderr + r.stdout
