"""Speed features change how fast a step runs, never what it computes: each one, switched on, gives the
losses and weights of the run with it off."""
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_images, run_training, sets
from engine.events import read_events

pytestmark = pytest.mark.slow

BASE = dict(resolution=64, rank=4, lora_alpha=4, learning_rate=1e-3, lr_warmup_steps=0, seed=5,
            train_batch_size=2, max_train_steps=4, report_to="none")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("speed") / "data", n=4)


@pytest.fixture(scope="module")
def baseline(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    run_training(sets(**BASE, train_data_dir=data, output_dir=out, adaptor_name="base"))
    return _losses(out / "base"), _weights(out / "base")


def _losses(run) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_events(run / "events.jsonl") if e["type"] == "step"}


def _weights(run):
    return load_file(str(run / "diffusers" / "pytorch_lora_weights.safetensors"))


def _max_diff(a, b) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("feature", ["cache_text_encoder_outputs", "channels_last"])
def test_feature_gives_the_same_losses_and_weights(feature, data, baseline, tmp_path):
    base_losses, base_weights = baseline
    proc = run_training(sets(**BASE, train_data_dir=data, output_dir=tmp_path, adaptor_name="f", **{feature: True}))
    losses = _losses(tmp_path / "f")
    assert losses.keys() == base_losses.keys()
    assert np.allclose([losses[k] for k in losses], [base_losses[k] for k in losses], rtol=1e-4, atol=1e-6)
    assert _max_diff(_weights(tmp_path / "f"), base_weights) < 1e-4
    if feature == "cache_text_encoder_outputs":
        assert "text-encoder cache: 4 captions encoded" in proc.stdout
        again = run_training(sets(**BASE, train_data_dir=data, output_dir=tmp_path, adaptor_name="g",
                                  cache_text_encoder_outputs=True))
        assert "text-encoder cache: 0 captions encoded" in again.stdout  # reused across runs


def test_logging_steps_reports_the_mean_and_changes_nothing_else(data, baseline, tmp_path):
    base_losses, base_weights = baseline
    run_training(sets(**BASE, train_data_dir=data, output_dir=tmp_path, adaptor_name="l", logging_steps=3))
    losses = _losses(tmp_path / "l")
    assert sorted(losses) == [3, 4]  # every 3rd step, and the last
    assert losses[3] == pytest.approx(np.mean([base_losses[s] for s in (1, 2, 3)]), rel=1e-5)
    assert losses[4] == pytest.approx(base_losses[4], rel=1e-5)
    assert _max_diff(_weights(tmp_path / "l"), base_weights) == 0.0


@pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("ADAPTOR_STUDIO_TEST_COMPILE")),
                    reason="compiling the UNet takes minutes on 2 CPU cores; runs on a GPU machine "
                           "(or set ADAPTOR_STUDIO_TEST_COMPILE=1)")
def test_torch_compile_gives_the_same_losses(data, baseline, tmp_path):
    base_losses, _ = baseline
    run_training(sets(**BASE, train_data_dir=data, output_dir=tmp_path, adaptor_name="c", torch_compile=True),
                 timeout=1800)
    losses = _losses(tmp_path / "c")
    assert np.allclose([losses[k] for k in losses], [base_losses[k] for k in losses], rtol=1e-3, atol=1e-5)
