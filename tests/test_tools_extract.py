"""engine/tools extract (issue #18): a LoRA from one of our own full fine-tunes of builtin:toy and its base."""
import numpy as np
import pytest

from conftest import run_training, sets
from lora_checks import image, load_base
from tools_loras import tools
from engine.tools import lora_file
from engine.tools.extract import extract
from engine.tools.models import load_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    from conftest import make_images
    data = make_images(tmp / "data")
    run_training(sets(pretrained_model_name_or_path="builtin:toy", method="full", resolution=64, learning_rate=1e-3,
                      lr_warmup_steps=0, seed=3, train_batch_size=2, report_to="none", max_train_steps=3,
                      train_data_dir=data, output_dir=tmp / "runs", adaptor_name="ft"), launch=False)
    return tmp / "runs" / "ft"


def _draw(model, lora=None):
    pipe = load_base(model, "sd1")
    if lora:
        pipe.load_lora_weights(str(lora))
    return image(pipe, steps=8)


def test_extract_at_rank_64_draws_close_to_the_full_run(full_run, tmp_path):
    out = tmp_path / "ft-r64.safetensors"
    text, _ = tools("extract", full_run, "--rank", "64", "--layout", "diffusers", "--out", out)
    lf = lora_file.read(out)
    assert lf.components == {"unet"}  # the run did not train the text encoder: kohya's rule leaves it out
    assert max(m.rank for m in lf.modules.values()) == 64 and "Frobenius norm kept" in text
    base, full, extracted = _draw("builtin:toy"), _draw(str(full_run / "diffusers")), _draw("builtin:toy", out)
    fine_tune, left = float(np.abs(full - base).mean()), float(np.abs(extracted - full).mean())
    print(f"\nextract rank 64: mean |image - full run's| = {left:.4f} (max {np.abs(extracted - full).max():.4f}); "
          f"the fine-tune moved the base image by {fine_tune:.4f}")
    assert fine_tune > 0.02
    assert left < 0.1 * fine_tune


def test_extract_at_full_rank_is_the_fine_tune_and_dynamic_ranks_keep_their_share(full_run):
    base, _ = load_pipeline("builtin:toy")
    tuned, _ = load_pipeline(str(full_run / "diffusers"))
    lf, rows = extract(base, tuned, 1152)  # every weight of the toy UNet has rank <= 1152 (128 x 3 x 3 inputs)
    assert min(r["fro_retained"] for r in rows) > 1 - 1e-6
    for (component, path), m in lf.modules.items():
        w = tuned.unet.get_submodule(path).weight
        want = (w.float() - base.unet.get_submodule(path).weight.float()).flatten(1)
        assert (m.delta() - want).abs().max() < 1e-5, path

    dynamic, rows = extract(base, tuned, 64, method="sv_fro", param=0.9)
    assert all(r["fro_retained"] >= 0.9 - 1e-6 for r in rows)
    assert len({r["new_rank"] for r in rows}) > 2  # each module its own rank
    fixed = {k: m.rank for k, m in extract(base, tuned, 64)[0].modules.items()}
    assert all(m.rank <= fixed[k] for k, m in dynamic.modules.items())


def test_extract_refuses_identical_models_and_a_model_without_its_base(tmp_path, full_run):
    _, err = tools("extract", "builtin:toy", "--base", "builtin:toy", "--rank", "4",
                   "--out", tmp_path / "x.safetensors", expect_rc=2)
    assert "the same weights" in err
    _, err = tools("extract", str(full_run / "diffusers"), "--rank", "4", "--out", tmp_path / "x.safetensors",
                   expect_rc=2)
    assert "--base" in err
    assert not (tmp_path / "x.safetensors").exists()


def test_publish_of_a_full_run_holds_the_whole_model(full_run, tmp_path):
    import yaml

    tools("publish", full_run, "--repo", "someone/toy-ft", "--out", tmp_path / "repo")
    files = {p.relative_to(tmp_path / "repo").as_posix() for p in (tmp_path / "repo").rglob("*") if p.is_file()}
    assert {"README.md", "config.toml", "ft.safetensors", "diffusers/model_index.json",
            "diffusers/unet/diffusion_pytorch_model.safetensors"} <= files
    assert not any(f.startswith(("checkpoints/", "events", "train.log")) for f in files)
    meta = yaml.safe_load((tmp_path / "repo" / "README.md").read_text().split("---\n")[1])
    assert meta["license"] == "creativeml-openrail-m"  # read from the single file's modelspec.architecture
    assert "lora" not in meta["tags"]
    assert 'from_pretrained("someone/toy-ft", subfolder="diffusers")' in (tmp_path / "repo" / "README.md").read_text()
