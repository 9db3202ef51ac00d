"""The one atomic writer (engine/atomic.py): ordinary permissions for what it writes, a replaced file's own mode
kept, and no temp left when a write fails."""
import os
import stat
from contextlib import contextmanager

import pytest
import torch
from PIL import Image

from conftest import make_images


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@contextmanager
def umask(value: int):
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_new_files_get_0666_less_the_umask(tmp_path, mask):
    from engine import atomic
    with umask(mask):
        atomic.write_bytes(tmp_path / "a.toml", b"x = 1\n")
        atomic.save_safetensors({"w": torch.zeros(3)}, tmp_path / "b.safetensors")  # safetensors alone makes 0600
        assert atomic.umask() == mask
    assert mode(tmp_path / "a.toml") == mode(tmp_path / "b.safetensors") == 0o666 & ~mask


def test_captions_presets_and_grids_rewritten_keep_their_mode(tmp_path, monkeypatch):
    from engine import presets
    from engine.config import load_config
    from engine.data.caption_files import save_caption
    from engine.generate import save_png

    data = make_images(tmp_path / "data", n=1)
    caption = data / "img0.txt"
    os.chmod(caption, 0o664)  # shared with a group
    save_caption(data, "img0.png", "a new caption")
    assert caption.read_text() == "a new caption" and mode(caption) == 0o664

    monkeypatch.setenv("ADAPTOR_STUDIO_HOME", str(tmp_path / "home"))
    cfg = load_config(overrides=[f"train_data_dir={data}"])
    path = presets.save_user_preset("mine", cfg)
    os.chmod(path, 0o600)  # kept private by its owner
    presets.save_user_preset("mine", cfg.replace(learning_rate=3e-4))
    assert "3e-4" in path.read_text() or "0.0003" in path.read_text()
    assert mode(path) == 0o600

    grid = tmp_path / "grid.png"
    save_png(Image.new("RGB", (8, 8)), grid)
    os.chmod(grid, 0o640)
    save_png(Image.new("RGB", (8, 8), "red"), grid)
    assert Image.open(grid).getpixel((0, 0)) == (255, 0, 0) and mode(grid) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["grid.png"]  # no temps beside it


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    from engine import atomic
    target = tmp_path / "config.toml"
    target.write_bytes(b"old")

    def half_then_fail(tmp):
        tmp.write_bytes(b"ne")
        raise RuntimeError("the writer broke")

    with pytest.raises(RuntimeError, match="the writer broke"):
        atomic.write_file(target, half_then_fail, 3)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["config.toml"]


def test_uploaded_and_example_dataset_folders_get_ordinary_permissions(tmp_path):
    """Both are built in a temp folder and renamed into place: mkdtemp's 0700 made them private."""
    import app
    from engine.data.uploads import create_dataset
    from engine.paths import PROJECT_ROOT

    images = make_images(tmp_path / "src", n=2)
    with umask(0o022):
        made = create_dataset(tmp_path / "datasets", "mine", sorted(images.iterdir())).folder
        example = app._working_copy(PROJECT_ROOT / "examples" / "datasets" / "toy-star", tmp_path / "datasets")
    assert mode(made) == mode(example) == 0o755
    assert mode(made / "img0.png") == 0o644
