"""LoRA variants (LoHa, LoKr, DoRA, conv layers), optimizers, losses, EDM, caption shuffling, colour jitter,
EMA and the single-file checkpoint of full training."""
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import run_training, sets
from lora_checks import image, load_base
from engine.config import ConfigError, load_config, validate
from engine.families import get_family

TINY = dict(pretrained_model_name_or_path="builtin:tiny-sd", train_data_dir="unused", resolution=64)


def _comps(**kw):
    cfg = validate({**TINY, **kw})
    family, source = get_family(cfg)
    return cfg, family.load(source, cfg, torch.float32)


# ----------------------------------------------------------------------------- LyCORIS / kohya files

def _randomize(module):
    gen = torch.Generator().manual_seed(0)
    for name, p in module.named_parameters():
        if p.requires_grad:
            p.data = torch.randn(p.shape, generator=gen) * 0.1


def _loader_delta(parts: dict, weight_shape) -> torch.Tensor:
    """The weight change a LyCORIS loader computes from a file's tensors (ComfyUI's weight_adapter and
    AUTOMATIC1111's network_* modules), written here from their formulas."""
    alpha = float(parts["alpha"])
    if "hada_w1_a" in parts:
        d = (parts["hada_w1_a"] @ parts["hada_w1_b"]) * (parts["hada_w2_a"] @ parts["hada_w2_b"])
        return d.reshape(weight_shape) * alpha / parts["hada_w1_b"].shape[0]
    if any(k.startswith("lokr_") for k in parts):
        w1 = parts["lokr_w1"] if "lokr_w1" in parts else parts["lokr_w1_a"] @ parts["lokr_w1_b"]
        w2 = parts["lokr_w2"] if "lokr_w2" in parts else parts["lokr_w2_a"] @ parts["lokr_w2_b"]
        dim = (parts["lokr_w1_b"].shape[0] if "lokr_w1_a" in parts
               else parts["lokr_w2_b"].shape[0] if "lokr_w2_a" in parts else None)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        return torch.kron(w1, w2).reshape(weight_shape) * (alpha / dim if dim else 1.0)
    up, down = parts["lora_up.weight"], parts["lora_down.weight"]
    d = (up.flatten(1) @ down.flatten(1)).reshape(weight_shape) if down.dim() == 2 or down.shape[2:] == (1, 1) \
        else torch.nn.functional.conv2d(down.transpose(0, 1), up.flip(2, 3)).transpose(0, 1)
    return d * alpha / down.shape[0]


@pytest.mark.parametrize("kw", [dict(lora_type="loha", conv_rank=4, conv_alpha=2.0),
                                dict(lora_type="lokr", conv_rank=4),
                                dict(use_dora=True, conv_rank=4, conv_alpha=2.0)])
def test_kohya_file_keys_and_weights_match_what_training_applies(kw):
    from engine import export
    from engine.methods import lora

    cfg, comps = _comps(rank=4, lora_alpha=8.0, **kw)
    lora.prepare(comps, cfg)
    _randomize(comps.unet)
    sd = export.kohya_state_dict(comps.family, lora.state_dicts({"unet": comps.unet}),
                                 {"unet": lora.module_alphas(comps.unet)})
    kind = cfg.lora_type
    want = {"loha": r"\.(hada_w[12]_[ab]|alpha)$", "lokr": r"\.(lokr_w[12](_[ab])?|alpha)$",
            "lora": r"\.(lora_(down|up)\.weight|dora_scale|alpha)$"}[kind]
    assert all(k.startswith("lora_unet_") and re.search(want, k) for k in sd), sorted(sd)[:5]
    conv_key = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert any(k.startswith(conv_key + ".") for k in sd)  # conv layers trained
    checked = 0
    for name, layer in comps.unet.named_modules():
        if not hasattr(layer, "get_delta_weight") or "default" not in getattr(layer, "r", {}):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        parts = {k[len(key) + 1:]: v for k, v in sd.items() if k.startswith(key + ".")}
        base = layer.get_base_layer().weight
        if kind == "lora" and cfg.use_dora:
            mag = parts.pop("dora_scale")
            assert mag.shape == (base.shape[0],) + (1,) * (base.dim() - 1)
            assert torch.allclose(mag.flatten(), layer.lora_magnitude_vector["default"].weight.flatten())
        expected = layer.get_delta_weight("default")
        assert torch.allclose(_loader_delta(parts, base.shape), expected, atol=1e-5, rtol=1e-4), name
        if "conv1" in name:  # conv layers use conv_rank / conv_alpha
            # LoKr's scale folded into lokr_w1, alpha = w2 rows / w1 rows: scale 1 whether a loader divides an
            # unsplit LoKr's alpha by that (some ComfyUI versions) or ignores it (LyCORIS, AUTOMATIC1111)
            folded = "lokr_w1" in parts and "lokr_w2" in parts
            conv_alpha = 1.0 if cfg.conv_alpha is None else cfg.conv_alpha
            want = parts["lokr_w2"].shape[0] // parts["lokr_w1"].shape[0] if folded else conv_alpha
            assert layer.r["default"] == 4 and float(parts["alpha"]) == want
        checked += 1
    assert checked > 10


def test_variant_combinations_are_refused_clearly():
    for bad, words in ((dict(lora_type="loha", use_dora=True), "use_dora"),
                       (dict(lora_type="lokr", lora_dropout=0.1), "rank_dropout"),
                       (dict(rank_dropout=0.1), "lora_dropout"),
                       (dict(do_edm_style_training=True, snr_gamma=5.0), "snr_gamma"),
                       (dict(color_jitter_hue=0.1, cache_latents=True), "cache_latents"),
                       (dict(use_ema=True), "method = \"full\"")):
        with pytest.raises(ConfigError, match=re.escape(words)):
            validate({**TINY, **bad})


def test_kohya_aliases(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('train_data_dir = "x"\nconv_dim = 8\nconv_alpha = 4\nmin_snr_gamma = 5\nema_on_cpu = true\n')
    cfg = load_config(toml)
    assert (cfg.conv_rank, cfg.conv_alpha, cfg.snr_gamma, cfg.offload_ema) == (8, 4.0, 5.0, True)


# ----------------------------------------------------------------------------- optimizers

@pytest.mark.parametrize("name,lr", [("adamw", 0.05), ("prodigy", 1.0), ("adafactor", 0.05), ("lion", 0.01)])
def test_every_optimizer_lowers_a_toy_loss(name, lr):
    from engine.optim import build_optimizer, optimizer_step_count

    cfg = validate({**TINY, "optimizer": name, "learning_rate": lr, "adam_weight_decay": 0.0,
                    "prodigy_use_bias_correction": True, "prodigy_d_coef": 2.0})
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16, 8))
    target = torch.randn(16, 8)
    opt = build_optimizer(cfg, [{"params": [w], "lr": lr, "name": "unet"}], on_cuda=False)
    losses = []
    for _ in range(50):  # Prodigy starts from a tiny step size and grows it
        loss = ((w - target) ** 2).mean()
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[-1] < 0.9 * losses[0], losses
    assert optimizer_step_count(opt) == 50


def test_adamw8bit_off_cuda_is_a_clear_error():
    from engine.optim import build_optimizer

    cfg = validate({**TINY, "optimizer": "adamw8bit"})
    with pytest.raises(ConfigError, match="CUDA"):
        build_optimizer(cfg, [{"params": [torch.nn.Parameter(torch.zeros(2))]}], on_cuda=False)


# ----------------------------------------------------------------------------- losses and EDM

def test_huber_and_smooth_l1_formulas():
    from engine.objective import elementwise_loss

    pred, target = torch.tensor([0.0, 0.05, 1.0, -3.0]).view(4, 1, 1, 1), torch.zeros(4, 1, 1, 1)
    ac = torch.linspace(0.99, 0.01, 1000)
    t = torch.tensor([0, 10, 500, 999])
    c = 0.1
    for kind, want in (("l2", pred**2), ("huber", 2 * c * (torch.sqrt(pred**2 + c**2) - c)),
                       ("smooth_l1", 2 * (torch.sqrt(pred**2 + c**2) - c))):
        cfg = validate({**TINY, "loss_type": kind, "huber_c": c})
        assert torch.allclose(elementwise_loss(pred, target, cfg, t, ac), want), kind
    # huber is quadratic near zero and linear far away
    huber = elementwise_loss(pred, target, validate({**TINY, "loss_type": "huber"}), t, ac).flatten()
    assert abs(huber[1] - 0.05**2) < 1e-3 * 5 and abs(huber[3] - 2 * c * (3 - c)) < 1e-2
    exp = elementwise_loss(pred, target, validate({**TINY, "loss_type": "huber", "huber_schedule": "exponential"}),
                           t, ac)
    assert not torch.allclose(exp, huber.view(4, 1, 1, 1))


def test_edm_style_loss_with_euler_sigmas():
    """With a non-EDM base, the preconditioned input x/sqrt(sigma^2+1) is exactly DDPM's noisy latent and the
    1/sigma^2-weighted clean-latent loss equals the epsilon loss; for v-prediction it weights the v loss by
    alphas_cumprod, so it differs."""
    from engine.objective import compute_loss

    def loss(edm, prediction):
        cfg, comps = _comps(do_edm_style_training=edm)
        # the tiny UNet's output layer starts at zero: give it an output
        comps.unet.conv_out.weight.data = torch.randn(comps.unet.conv_out.weight.shape,
                                                      generator=torch.Generator().manual_seed(2))
        batch = {"latents": torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)),
                 "captions": ["a red square", "a blue square"]}
        hidden = lambda caps: (torch.zeros(len(caps), 77, 32), None)  # noqa: E731
        return compute_loss(batch, comps, comps.unet, hidden, cfg, torch.device("cpu"), torch.float32, prediction,
                            comps.noise_scheduler.alphas_cumprod, torch.Generator().manual_seed(0)).item()

    eps = loss(True, "epsilon"), loss(False, "epsilon")
    assert all(np.isfinite(eps)) and abs(eps[0] - eps[1]) < 1e-4 * eps[1]
    v = loss(True, "v_prediction"), loss(False, "v_prediction")
    assert np.isfinite(v[0]) and abs(v[0] - v[1]) > 1e-3 * v[1]


# ----------------------------------------------------------------------------- data options

def test_shuffle_caption_keeps_the_first_tokens_and_the_trigger():
    from engine.data.augment import shuffle_tags

    caption = "sks, a photo, red, blue, green, yellow, purple, orange"
    seen = set()
    for seed in range(30):
        out = shuffle_tags(caption, 2, "sks", torch.Generator().manual_seed(seed)).split(", ")
        assert out[:2] == ["sks", "a photo"] and sorted(out) == sorted(caption.split(", "))
        seen.add(tuple(out))
    assert len(seen) > 10
    out = shuffle_tags(caption, 0, "sks", torch.Generator().manual_seed(3)).split(", ")
    assert out[0] == "sks"  # the trigger counts as kept even with keep_tokens = 0


def test_color_jitter_changes_pixels_within_bounds_and_is_seed_deterministic():
    from engine.data.augment import color_jitter

    arr = np.random.default_rng(0).integers(30, 220, (32, 32, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    a = np.asarray(color_jitter(img, 0.2, 0.0, 0.0, 0.0, torch.Generator().manual_seed(5))).astype(float)
    b = np.asarray(color_jitter(img, 0.2, 0.0, 0.0, 0.0, torch.Generator().manual_seed(5))).astype(float)
    assert np.array_equal(a, b) and not np.array_equal(a, arr)
    ratio = a.mean() / arr.mean()
    assert 0.79 <= ratio <= 1.21  # brightness factor within [1 - 0.2, 1 + 0.2]
    full = np.asarray(color_jitter(img, 0.3, 0.3, 0.3, 0.1, torch.Generator().manual_seed(1)))
    assert full.shape == arr.shape and full.dtype == np.uint8 and not np.array_equal(full, arr)


# ----------------------------------------------------------------------------- single-file checkpoints

@pytest.mark.parametrize("model", ["builtin:tiny-sd", "builtin:tiny-sdxl"])
def test_single_file_loads_back_with_every_weight(tmp_path, model):
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    from engine.builtin import resolve_builtin
    from engine.single_file import write_single_file
    from lora_checks import pipeline_class

    family = "sdxl" if model.endswith("sdxl") else "sd1"
    pipe = load_base(model, family)
    path = write_single_file(pipe, family, tmp_path / "m.safetensors")
    kw = {} if family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    back = pipeline_class(family).from_single_file(str(path), config=str(resolve_builtin(model)), **kw)
    parts = ["unet", "vae", "text_encoder"]
    for part in parts:
        a, b = getattr(pipe, part).state_dict(), getattr(back, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    if family == "sdxl":
        # diffusers tells SDXL's two encoders apart by width, which the tiny model's equal widths defeat:
        # check the OpenCLIP half with diffusers' own converter
        conv = convert_open_clip_checkpoint(pipe.text_encoder_2, load_file(str(path)),
                                            prefix="conditioner.embedders.1.model.")
        a = pipe.text_encoder_2.state_dict()
        assert a.keys() == conv.keys() and all(torch.equal(a[k], conv[k]) for k in a)
    else:
        back.set_progress_bar_config(disable=True)
        assert np.array_equal(image(pipe), image(back))


# ----------------------------------------------------------------------------- trained under accelerate

COMMON = dict(pretrained_model_name_or_path="builtin:tiny-sd", resolution=64, learning_rate=5e-2,
              lr_warmup_steps=0, seed=3, train_batch_size=2, report_to="none", max_train_steps=3, rank=4)


def _run(tmp_path, tiny_data, name, **kw):
    out = tmp_path / "runs"
    run_training(sets(**{**COMMON, **kw}, train_data_dir=tiny_data, output_dir=out, adaptor_name=name))
    return out / name


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_lycoris_run_loads_into_a_pipeline_and_changes_the_image(tmp_path, tiny_data, kind):
    from engine.methods import lora

    run = _run(tmp_path, tiny_data, kind, lora_type=kind, conv_rank=4, validation_prompt="a red square",
               num_validation_images=1, num_inference_steps=2)
    assert list((run / "samples").glob("*.png"))  # validation images through the trained modules
    keys = load_file(str(run / f"{kind}.safetensors")).keys()
    assert any(k.endswith(".hada_w1_a" if kind == "loha" else ".lokr_w1") for k in keys)
    assert not (run / "diffusers").exists()
    cfg = load_config(run / "config.toml")
    pipe = load_base("builtin:tiny-sd", "sd1")
    before = image(pipe)
    lora.load_into_pipeline(pipe, run, cfg)
    after = image(pipe)
    assert np.abs(after - before).max() > 1e-3
    half = load_base("builtin:tiny-sd", "sd1")
    lora.load_into_pipeline(half, run, cfg, scale=0.5)
    assert 0 < np.abs(image(half) - before).max() < np.abs(after - before).max() + 1e-6

    from PIL import Image

    from engine.generate import compare_grid
    grid = compare_grid(None, run, ["a red square"], steps=2, out=tmp_path / "grid.png")  # the Compare tab
    base_cell, adaptor_cell = (np.asarray(Image.open(c), dtype=float) for c in grid["cells"][0][:2])
    assert np.abs(adaptor_cell - base_cell).max() > 0


@pytest.mark.slow
def test_dora_with_conv_layers_loads_with_load_lora_weights(tmp_path, tiny_data):
    from engine.methods import lora

    run = _run(tmp_path, tiny_data, "dora", use_dora=True, conv_rank=4, conv_alpha=4.0, lora_dropout=0.1)
    keys = load_file(str(run / "dora.safetensors")).keys()
    assert any(k.endswith(".dora_scale") for k in keys)
    assert any("resnets_0_conv1.lora_down" in k for k in keys)
    pipe = load_base("builtin:tiny-sd", "sd1")
    before = image(pipe)
    pipe.load_lora_weights(str(run / "diffusers"))
    standard = image(pipe)
    assert np.abs(standard - before).max() > 1e-3
    ours = load_base("builtin:tiny-sd", "sd1")
    lora.load_into_pipeline(ours, run, load_config(run / "config.toml"))
    assert np.allclose(image(ours), standard, atol=1e-5)


@pytest.mark.slow
def test_full_with_ema_saves_the_average_and_a_single_file_that_loads(tmp_path, tiny_data):
    from diffusers import StableDiffusionPipeline

    from engine.checkpoints import load_trained_state

    args = dict(method="full", use_ema=True, ema_decay=0.5, learning_rate=1e-3, checkpointing_steps=2)
    run = _run(tmp_path, tiny_data, "ft", **args)
    ckpt = run / "checkpoints" / "checkpoint-2"
    state = load_trained_state(ckpt / "trained_state.safetensors")
    saved = load_file(str(ckpt / "diffusers" / "unet" / "diffusion_pytorch_model.safetensors"))
    ema, raw = state["ema_unet"], state["unet"]
    assert int(ema.pop("__optimization_step__")) == 2
    assert all(torch.equal(saved[k], ema[k]) for k in ema)
    assert max((ema[k] - raw[k]).abs().max().item() for k in ema) > 0  # the average is not the weights

    pipe = StableDiffusionPipeline.from_pretrained(run / "diffusers", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    single = StableDiffusionPipeline.from_single_file(str(run / "ft.safetensors"), config=str(run / "diffusers"),
                                                      safety_checker=None)
    single.set_progress_bar_config(disable=True)
    assert np.array_equal(image(pipe), image(single))
    assert np.abs(image(pipe) - image(load_base("builtin:tiny-sd", "sd1"))).max() > 1e-3

    # resuming from the checkpoint restores the EMA too: the same averaged weights as the uninterrupted run
    final = load_file(str(run / "diffusers" / "unet" / "diffusion_pytorch_model.safetensors"))
    _run(tmp_path, tiny_data, "ft", **args, resume_from_checkpoint=ckpt)
    resumed = load_file(str(run / "diffusers" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert max((final[k] - resumed[k]).abs().max().item() for k in final) < 1e-6
