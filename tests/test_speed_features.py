"""Speed features change how fast a step runs, never what it computes: each one, switched on, gives the
losses and weights of the run with it off (bf16: close to them)."""
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_images, run_training, sets
from engine.events import read_events

pytestmark = pytest.mark.slow

BASE = dict(resolution=64, rank=4, lora_alpha=4, learning_rate=1e-3, lr_warmup_steps=0, seed=5,
            train_batch_size=2, max_train_steps=4, report_to="none")
# Each flips one feature away from its default (attention and fused AdamW are on by default).
SAME_RESULT = {
    "cache_latents": dict(cache_latents=True),
    "cache_text_encoder_outputs": dict(cache_text_encoder_outputs=True),
    "channels_last": dict(channels_last=True),
    "eager attention (no SDPA)": dict(attention="eager"),
    "unfused AdamW": dict(fused_adamw=False),
    "dataloader worker": dict(dataloader_num_workers=1),
}

CACHE_SAYS = {"cache_latents": "latent cache: {} latents encoded",
              "cache_text_encoder_outputs": "text-encoder cache: {} captions encoded"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """tiny-sd with a near-deterministic VAE posterior (std 3e-7), as real SD VAEs nearly have: a fresh encode's
    sample then equals the cached mode, so cache_latents can be held to the same losses. The random tiny VAE's
    posterior std is ~1, which would make the two objectives differ by design, not by a fault."""
    from diffusers import AutoencoderKL

    from engine.builtin import resolve_builtin

    folder = tmp_path_factory.mktemp("model") / "tiny-sd"
    shutil.copytree(resolve_builtin("builtin:tiny-sd"), folder)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    half = vae.quant_conv.out_channels // 2  # [mean, logvar] channels
    with torch.no_grad():
        vae.quant_conv.weight[half:] = 0
        vae.quant_conv.bias[half:] = -30.0  # diffusers clamps logvar to [-30, 20]
    vae.save_pretrained(folder / "vae")
    return str(folder)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("speed") / "data", n=4)


@pytest.fixture(scope="module")
def train(model, data):
    """train(out, name, **settings): one real training run (a `python -m engine.train` subprocess)."""
    def run(out, name, timeout=600, **kw):
        cfg = {**BASE, "pretrained_model_name_or_path": model, "train_data_dir": data, **kw}
        return run_training(sets(**cfg, output_dir=out, adaptor_name=name), launch=False, timeout=timeout)
    return run


@pytest.fixture(scope="module")
def baseline(train, tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    train(out, "base")
    return _losses(out / "base"), _weights(out / "base")


def _losses(run) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in read_events(run / "events.jsonl") if e["type"] == "step"}


def _weights(run):
    return load_file(str(run / "diffusers" / "pytorch_lora_weights.safetensors"))


def _max_diff(a, b) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _assert_same(run, base_losses, base_weights, rtol=1e-4, weights_tol=1e-4):
    losses = _losses(run)
    assert losses.keys() == base_losses.keys()
    assert np.allclose([losses[k] for k in losses], [base_losses[k] for k in losses], rtol=rtol, atol=1e-6), \
        (losses, base_losses)
    assert _max_diff(_weights(run), base_weights) < weights_tol


@pytest.mark.parametrize("feature", list(SAME_RESULT))
def test_feature_gives_the_same_losses_and_weights(feature, train, baseline, tmp_path):
    proc = train(tmp_path, "f", **SAME_RESULT[feature])
    _assert_same(tmp_path / "f", *baseline)
    if feature in CACHE_SAYS:
        assert CACHE_SAYS[feature].format(4) in proc.stdout
    if feature == "cache_text_encoder_outputs":  # latents' reuse across runs: test_cli's launch.sh test
        again = train(tmp_path, "g", **SAME_RESULT[feature])
        assert CACHE_SAYS[feature].format(0) in again.stdout  # reused across runs
        _assert_same(tmp_path / "g", *baseline)


def test_bf16_gives_close_losses_and_never_reuses_float32_caches(train, baseline, tmp_path):
    base_losses, base_weights = baseline
    # the float32 runs above (same model, captions and images) have filled both caches; a bf16 model's latents
    # and text-encoder outputs differ, so they are encoded again, not taken from the float32 entries
    proc = train(tmp_path, "b", mixed_precision="bf16", cache_latents=True, cache_text_encoder_outputs=True)
    assert CACHE_SAYS["cache_latents"].format(4) in proc.stdout
    assert CACHE_SAYS["cache_text_encoder_outputs"].format(4) in proc.stdout
    # bf16 keeps 8 mantissa bits: the frozen model runs coarser, the LoRA weights train in float32
    _assert_same(tmp_path / "b", base_losses, base_weights, rtol=5e-2, weights_tol=5e-3)


def test_bucketing_a_square_dataset_gives_the_same_losses(train, tmp_path):
    # One image seen four times: the bucket sampler's batch order and the plain shuffle's differ, so only a
    # dataset whose examples are all alike can show that the steps themselves are the same.
    data = make_images(tmp_path / "data", n=1)
    train(tmp_path, "off", train_data_dir=data, repeats=4)
    proc = train(tmp_path, "on", train_data_dir=data, repeats=4, enable_bucket=True, min_bucket_reso=64,
                 max_bucket_reso=128, bucket_reso_steps=64)
    assert '"resolution": [64, 64], "count": 4' in (tmp_path / "on" / "events.jsonl").read_text(), proc.stdout
    _assert_same(tmp_path / "on", _losses(tmp_path / "off"), _weights(tmp_path / "off"))


def test_logging_steps_reports_the_mean_and_changes_nothing_else(train, baseline, tmp_path):
    base_losses, base_weights = baseline
    train(tmp_path, "l", logging_steps=3)
    losses = _losses(tmp_path / "l")
    assert sorted(losses) == [3, 4]  # every 3rd step, and the last
    assert losses[3] == pytest.approx(np.mean([base_losses[s] for s in (1, 2, 3)]), rel=1e-5)
    assert losses[4] == pytest.approx(base_losses[4], rel=1e-5)
    assert _max_diff(_weights(tmp_path / "l"), base_weights) == 0.0


@pytest.mark.skipif(not (torch.cuda.is_available() or os.environ.get("ADAPTOR_STUDIO_TEST_COMPILE")),
                    reason="compiling the UNet takes minutes on 2 CPU cores; runs on a GPU machine "
                           "(or set ADAPTOR_STUDIO_TEST_COMPILE=1)")
def test_torch_compile_gives_the_same_losses(train, baseline, tmp_path):
    base_losses, _ = baseline
    train(tmp_path, "c", torch_compile=True, timeout=1800)
    losses = _losses(tmp_path / "c")
    assert np.allclose([losses[k] for k in losses], [base_losses[k] for k in losses], rtol=1e-3, atol=1e-5)
