"""method = "dreambooth" (LoRA and full, prior preservation) and "textual_inversion" (SD and SDXL)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import make_images, run_training, sets
from engine.builtin import resolve_builtin
from engine.config import ConfigError, load_config, validate
from engine.events import read_events
from engine.families import get_family
from engine.methods import dreambooth, textual_inversion
from engine.objective import compute_loss

BASE = dict(resolution=64, seed=5, train_batch_size=2, report_to="none", lr_warmup_steps=0)


def _comps(**kw):
    kw = {k: str(v) if isinstance(v, Path) else v for k, v in kw.items()}
    cfg = validate({"train_data_dir": "unused", **BASE, **kw})
    family, source = get_family(cfg)
    return cfg, family.load(source, cfg, torch.float32)


def _image(pipe, prompt):
    return pipe(prompt, num_inference_steps=2, height=64, width=64, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


# ----------------------------------------------------------------------------- config

@pytest.mark.parametrize("kw,words", [
    (dict(method="dreambooth"), "needs instance_prompt"),
    (dict(method="dreambooth", instance_prompt="a sks dog", with_prior_preservation=True, class_prompt="a dog"),
     "needs class_data_dir"),
    (dict(method="dreambooth", instance_prompt="a sks dog", trigger_word="sks"), "trigger_word is not used"),
    (dict(method="lora", with_prior_preservation=True), "is a DreamBooth setting"),
    (dict(method="textual_inversion", placeholder_token="<x>"), "needs initializer_token"),
    (dict(method="textual_inversion", placeholder_token="<x>", initializer_token="dog",
          cache_text_encoder_outputs=True), "cache_text_encoder_outputs"),
])
def test_method_settings_are_checked_with_a_clear_message(kw, words):
    with pytest.raises(ConfigError, match=words):
        validate({"train_data_dir": "x", **kw})


def test_instance_data_dir_is_the_training_folder(tmp_path):
    assert load_config(None, ["instance_data_dir=subject"]).train_data_dir == "subject"
    (tmp_path / "c.toml").write_text('[dreambooth]\ninstance_data_dir = "chair"\ninstance_prompt = "a sks chair"\n')
    assert load_config(tmp_path / "c.toml").train_data_dir == "chair"


# ----------------------------------------------------------------------------- in-process units

def test_prior_loss_is_weighted_into_the_loss_on_the_class_half():
    cfg, comps = _comps(pretrained_model_name_or_path="builtin:tiny-sd", method="dreambooth",
                        instance_prompt="a sks dog", with_prior_preservation=True, class_prompt="a dog",
                        class_data_dir="unused")
    g = torch.Generator().manual_seed(1)
    batch = {"pixel_values": torch.rand(4, 3, 64, 64, generator=g) * 2 - 1,
             "captions": ["a sks dog"] * 2 + ["a dog"] * 2,
             **{k: torch.tensor([[64, 64]] * 4) for k in ("original_sizes", "target_sizes")},
             "crop_top_lefts": torch.zeros(4, 2, dtype=torch.long)}

    def encode(captions):
        return comps.family.encode_prompt(comps.tokenizers, comps.text_encoders, captions, "cpu")

    def loss(weight):
        with torch.no_grad():
            return dreambooth.compute_loss(batch, comps, comps.unet, encode, cfg.replace(prior_loss_weight=weight),
                                           torch.device("cpu"), torch.float32, "epsilon",
                                           comps.noise_scheduler.alphas_cumprod, torch.Generator().manual_seed(7))
    (zero, parts0), (one, parts1), (two, _) = loss(0.0), loss(1.0), loss(2.0)
    assert torch.equal(zero, parts0["instance_loss"]) and parts0["prior_loss"] > 0
    assert torch.allclose(one, parts1["instance_loss"] + parts1["prior_loss"])
    assert torch.allclose(two - one, parts1["prior_loss"])
    # the instance half alone is what the plain objective computes on those rows
    plain = compute_loss({k: v[:2] for k, v in batch.items()}, comps, comps.unet, encode, cfg, torch.device("cpu"),
                         torch.float32, "epsilon", comps.noise_scheduler.alphas_cumprod,
                         torch.Generator().manual_seed(7))
    assert torch.allclose(plain, parts0["instance_loss"])


def test_prior_preservation_batches_hold_subject_then_as_many_class_examples():
    sampler = dreambooth.PriorPreservationSampler(num_instance=5, num_class=7, batch_size=2, seed=3)
    seen_class = set()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 3
        assert sorted(i for b in batches for i in b[: len(b) // 2]) == list(range(5))
        for b in batches:
            assert len(b) % 2 == 0 and all(i >= 5 for i in b[len(b) // 2:])
            seen_class.update(b[len(b) // 2:])
    assert seen_class == set(range(5, 12))  # every class image is used across epochs


def test_textual_inversion_trains_only_the_new_rows():
    cfg, comps = _comps(pretrained_model_name_or_path="builtin:tiny-sd", method="textual_inversion",
                        placeholder_token="<cat-toy>", initializer_token="dog", num_vectors=3)
    before = comps.text_encoders[0].get_input_embeddings().weight.detach().clone()
    groups = textual_inversion.prepare(comps, cfg)
    modules = textual_inversion.trained_modules(comps, cfg)
    weight = comps.text_encoders[0].get_input_embeddings().weight
    ids = comps.tokenizers[0].convert_tokens_to_ids(["<cat-toy>", "<cat-toy>_1", "<cat-toy>_2"])
    init = comps.tokenizers[0].encode("dog", add_special_tokens=False)[0]
    assert ids == list(range(before.shape[0], before.shape[0] + 3))
    assert torch.equal(weight[ids], before[init].expand(3, -1))
    assert [p for g in groups for p in g["params"]] == [weight]
    opt = torch.optim.AdamW([weight], lr=0.1, weight_decay=0.5)
    for _ in range(2):
        weight.grad = torch.randn_like(weight)  # a gradient on every row, and weight decay on all of them
        opt.step()
        textual_inversion.after_optimizer_step(modules)
    assert torch.equal(weight[: before.shape[0]], before)  # bit-identical
    assert (weight[ids] - before[init]).abs().min() > 0
    with pytest.raises(ConfigError, match="already a token"):
        textual_inversion.prepare(comps, cfg)
    other_cfg, other = _comps(pretrained_model_name_or_path="builtin:tiny-sd", method="textual_inversion",
                              placeholder_token="<y>", initializer_token="a sks dog")
    with pytest.raises(ConfigError, match="initializer_token"):
        textual_inversion.prepare(other, other_cfg)


def test_textual_inversion_files_load_in_diffusers_and_change_the_image(tmp_path):
    from diffusers import StableDiffusionPipeline

    cfg, comps = _comps(pretrained_model_name_or_path="builtin:tiny-sd", method="textual_inversion",
                        placeholder_token="<cat-toy>", initializer_token="dog")
    textual_inversion.prepare(comps, cfg)
    modules = textual_inversion.trained_modules(comps, cfg)
    with torch.no_grad():  # stands in for training: move the new row (not uniformly: LayerNorm would undo it)
        moved = torch.randn(32, generator=torch.Generator().manual_seed(0))
        modules["text_encoder"].get_input_embeddings().weight[-1] += moved
    outputs = textual_inversion.write_outputs(tmp_path, cfg, comps, modules, {"step": 1})
    a1111 = load_file(outputs["kohya"])
    assert set(a1111) == {"emb_params"} and a1111["emb_params"].shape == (1, 32)
    pipe = StableDiffusionPipeline.from_pretrained(resolve_builtin("builtin:tiny-sd"), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    before = _image(pipe, "a photo of dog")
    pipe.load_textual_inversion(outputs["diffusers"])  # the token is read from the file
    assert abs(_image(pipe, "a photo of <cat-toy>") - before).max() > 1e-4


# ----------------------------------------------------------------------------- real runs (accelerate launch)

@pytest.mark.slow
def test_dreambooth_lora_with_prior_preservation(tmp_path):
    from diffusers import StableDiffusionPipeline

    subject = make_images(tmp_path / "subject", n=3, captions=False)
    classes, out = tmp_path / "class", tmp_path / "runs"
    kw = dict(BASE, pretrained_model_name_or_path="builtin:tiny-sd", method="dreambooth",
              instance_data_dir=subject, instance_prompt="a photo of sks dog", with_prior_preservation=True,
              class_prompt="a photo of dog", class_data_dir=classes, num_class_images=5, sample_batch_size=2,
              num_inference_steps=2, learning_rate=1e-2, max_train_steps=3, output_dir=out, adaptor_name="db",
              validation_prompt="a photo of sks dog", num_validation_images=1, validation_split=0.34)
    run_training(sets(**kw))
    made = sorted(classes.glob("*.png"))
    assert len(made) == 5
    events = read_events(out / "db" / "events.jsonl")
    steps = [e for e in events if e["type"] == "step"]
    assert steps and all(e["loss"] == pytest.approx(e["instance_loss"] + e["prior_loss"], rel=1e-5) for e in steps)
    assert next(e for e in events if e["type"] == "start")["num_examples"] == 2 + 5  # one subject image held out
    losses = [e for e in events if e["type"] == "validation_loss"]  # subject only: no class half to pair
    assert losses[0]["step"] == 0 and losses[-1]["step"] == 3 and all(0 < e["loss"] < 10 for e in losses)
    with safe_open(str(out / "db" / "db.safetensors"), "pt") as fh:
        assert fh.metadata()["modelspec.trigger_phrase"] == "a photo of sks dog"

    # the class images are reused: a second fill generates nothing and touches no file
    mtimes = [p.stat().st_mtime_ns for p in made]
    cfg, comps = _comps(**{k: v for k, v in kw.items() if k != "instance_data_dir"})
    assert dreambooth.generate_class_images(cfg, comps, torch.device("cpu"), say=lambda m: None) == 0
    assert [p.stat().st_mtime_ns for p in sorted(classes.glob("*.png"))] == mtimes
    assert dreambooth.generate_class_images(cfg.replace(num_class_images=6), comps, torch.device("cpu"),
                                            say=lambda m: None) == 1

    pipe = StableDiffusionPipeline.from_pretrained(resolve_builtin("builtin:tiny-sd"), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    before = _image(pipe, "a photo of sks dog")
    pipe.load_lora_weights(str(out / "db" / "diffusers"))
    assert abs(_image(pipe, "a photo of sks dog") - before).max() > 1e-4


@pytest.mark.slow
def test_dreambooth_full_writes_a_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "runs"
    run_training(sets(**BASE, pretrained_model_name_or_path="builtin:tiny-sd", method="dreambooth",
                      dreambooth_full=True, instance_data_dir=make_images(tmp_path / "s", n=2),
                      instance_prompt="a photo of sks dog", learning_rate=1e-3, max_train_steps=2,
                      output_dir=out, adaptor_name="dbf"))
    base = StableDiffusionPipeline.from_pretrained(resolve_builtin("builtin:tiny-sd"), safety_checker=None)
    tuned = StableDiffusionPipeline.from_pretrained(out / "dbf" / "diffusers", safety_checker=None)
    for p in (base, tuned):
        p.set_progress_bar_config(disable=True)
    assert abs(_image(tuned, "a photo of sks dog") - _image(base, "a photo of sks dog")).max() > 1e-4
    assert "A DreamBooth fully trained model" in (out / "dbf" / "README.md").read_text()


@pytest.mark.slow
def test_textual_inversion_on_sdxl_trains_and_saves_both_encoders(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    out = tmp_path / "runs"
    run_training(sets(**BASE, pretrained_model_name_or_path="builtin:tiny-sdxl", method="textual_inversion",
                      train_data_dir=make_images(tmp_path / "d", n=2), placeholder_token="<tok>",
                      initializer_token="dog", num_vectors=2, learning_rate=0.05, max_train_steps=3,
                      validation_prompt="a photo of <tok>", num_validation_images=1, num_inference_steps=2,
                      output_dir=out, adaptor_name="ti", validation_split=0.5))
    run = out / "ti"
    losses = [e for e in read_events(run / "events.jsonl") if e["type"] == "validation_loss"]
    assert losses[0]["step"] == 0 and losses[-1]["step"] == 3 and all(0 < e["loss"] < 10 for e in losses)
    assert len(list((run / "samples").glob("*.png"))) >= 1  # validation sampled with the new token
    a1111 = load_file(str(run / "ti.safetensors"))
    one, two = (load_file(str(run / "diffusers" / f)) for f in textual_inversion.DIFFUSERS_FILES)
    assert set(a1111) == {"clip_l", "clip_g"} and set(one) == set(two) == {"<tok>"}
    assert torch.equal(a1111["clip_l"], one["<tok>"]) and torch.equal(a1111["clip_g"], two["<tok>"])

    pipe = StableDiffusionXLPipeline.from_pretrained(resolve_builtin("builtin:tiny-sdxl"))
    pipe.set_progress_bar_config(disable=True)
    widths = [pipe.text_encoder.config.hidden_size, pipe.text_encoder_2.config.hidden_size]
    assert [tuple(a1111[k].shape) for k in ("clip_l", "clip_g")] == [(2, w) for w in widths]
    before = _image(pipe, "a photo of dog dog")  # what the two vectors started as
    pipe.load_textual_inversion(str(run / "diffusers" / "learned_embeds.safetensors"), token="<tok>",
                                text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(a1111["clip_g"], token="<tok>", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    after = _image(pipe, "a photo of <tok>")
    assert abs(after - before).max() > 1e-4

    fresh = StableDiffusionXLPipeline.from_pretrained(resolve_builtin("builtin:tiny-sdxl"))
    fresh.set_progress_bar_config(disable=True)
    textual_inversion.load_into_pipeline(fresh, run, validate({"train_data_dir": "x", "method": "textual_inversion",
                                                               "placeholder_token": "<tok>",
                                                               "initializer_token": "dog"}))
    assert abs(_image(fresh, "a photo of <tok>") - after).max() < 1e-5

    # the Compare tab: the token is the run's trigger, and the third column uses it
    from engine.generate import compare_grid
    grid = compare_grid(None, run, ["a photo of dog"], steps=2, out=tmp_path / "grid.png")
    assert grid["trigger"] == "<tok>" and grid["cols"] == 3
    base_cell, adaptor_cell, trigger_cell = (np.asarray(Image.open(c), dtype=float) for c in grid["cells"][0])
    assert np.abs(adaptor_cell - base_cell).max() == 0  # without its token, an embedding changes nothing
    assert np.abs(trigger_cell - base_cell).max() > 0
