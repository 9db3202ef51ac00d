"""Sampling as users know it: sampler names, sd-scripts' prompt lines, clip_skip, the settings recorded with each
sample (and a plain diffusers pipeline drawing the same image from them), sampling and saving on a step or epoch
schedule, and autocast that leaves the VAE in its own dtype."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_images, run_training, sets
from engine.config import ConfigError, validate
from engine.events import iter_events
from engine.sampling import metadata, prompts, samplers
from engine.sampling.autocast import pipeline_autocast
from lora_checks import load_base

BASE = dict(pretrained_model_name_or_path="builtin:tiny-sd", resolution=64, train_batch_size=2, rank=4,
            lora_alpha=4, learning_rate=1e-2, lr_warmup_steps=0, seed=1, report_to="none", num_validation_images=1,
            num_inference_steps=3)


# ----------------------------------------------------------------------------- names and prompt lines

@pytest.mark.parametrize("spelling, name", [
    ("DPM++ 2M Karras", "dpmpp_2m_karras"), ("dpmpp_2m karras", "dpmpp_2m_karras"), ("Euler a", "euler_a"),
    ("euler_ancestral", "euler_a"), ("k_euler_a", "euler_a"), ("dpmsolver++", "dpmpp_2m"), ("DDIM", "ddim"),
    ("uni_pc", "unipc"), ("default", "default")])
def test_sampler_names_users_know_map_to_ours(spelling, name):
    assert samplers.canonical(spelling) == name
    assert validate({"train_data_dir": "x", "sample_sampler": spelling}).sample_sampler == name


def test_every_sampler_is_a_diffusers_scheduler_on_the_base_noise_schedule():
    base = load_base("builtin:tiny-sd", "sd1").scheduler
    for name in samplers.NAMES:
        s = samplers.make_scheduler(name, base)
        assert s.config.beta_schedule == base.config.beta_schedule and s.config.prediction_type == "epsilon", name
    assert type(samplers.make_scheduler("euler_a", base)).__name__ == "EulerAncestralDiscreteScheduler"
    assert samplers.make_scheduler("dpmpp_2m_karras", base).config.use_karras_sigmas is True
    with pytest.raises(ConfigError, match="sample_sampler = 'dpm fast'.*must be one of"):
        validate({"train_data_dir": "x", "sample_sampler": "dpm fast"})


def test_prompt_lines_take_sd_scripts_options_and_bad_ones_name_the_line():
    got = prompts.parse("# a comment\n\na red star --n blurry, lowres --w 512 --h 768 --s 28 --d 42 --l 6.5 "
                        "--ss k_euler_a\na blue circle")
    assert got == [prompts.SamplePrompt(0, "a red star", "blurry, lowres", 512, 768, 28, 42, 6.5, "euler_a"),
                   prompts.SamplePrompt(1, "a blue circle")]
    for text, words in [("ok\nbad --w 100", "validation_prompt line 2: --w (width): 100 must be from 64 to 4096, a "
                                            "multiple of 8"),
                        ("x --l lots", "line 1: --l (guidance scale): 'lots' is not a number"),
                        ("x --q 1", "line 1: unknown option --q"), ("--w 64", "line 1: the prompt is empty")]:
        with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")):
            validate({"train_data_dir": "x", "validation_prompt": text})


def test_clip_skip_uses_an_earlier_layer_through_the_final_norm_and_sdxl_refuses_it():
    from engine.families import get_family

    pipe = load_base("builtin:tiny-sd", "sd1")
    family, _ = get_family(validate({"train_data_dir": "x"}))
    ids = pipe.tokenizer(["a red square"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
        te = pipe.text_encoder
        expected = getattr(te, "text_model", te).final_layer_norm(states[-2])
        got, _ = family.encode_prompt([pipe.tokenizer], [te], ["a red square"], "cpu", clip_skip=2)
        last, _ = family.encode_prompt([pipe.tokenizer], [te], ["a red square"], "cpu")
    assert torch.equal(got, expected) and not torch.allclose(got, last)
    with pytest.raises(ConfigError, match="clip_skip = 2 applies to SD 1.x/2.x"):
        validate({"train_data_dir": "x", "clip_skip": 2, "model_family": "sdxl"})


# ----------------------------------------------------------------------------- one run, many checks

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two prompts (one with every option), a sampler, samples at first and every 2 steps, adaptors every 2
    steps and every epoch, over 3 epochs of 2 steps."""
    tmp = tmp_path_factory.mktemp("sampling")
    data = make_images(tmp / "data", n=4)
    run_training(sets(**BASE, train_data_dir=data, output_dir=tmp / "runs", adaptor_name="s", max_train_steps=6,
                      validation_prompt="a red square\na blue square --n green --w 72 --h 64 --s 4 --d 7 --l 5.5",
                      sample_sampler="DPM++ 2M Karras", sample_at_first=True, sample_every_n_steps=3,
                      validation_epochs=2, save_every_n_steps=4, save_every_n_epochs=1), launch=False)
    return tmp / "runs" / "s"


def test_samples_come_at_first_every_n_steps_and_every_n_epochs_per_prompt(run):
    samples = [e for e in iter_events(run / "events.jsonl") if e["type"] == "sample"]
    by_step = sorted({(e["step"], e["prompt_index"]) for e in samples})
    # at first (0), every 3 steps (3, 6), every 2 epochs (step 4), and the end (6, once)
    assert by_step == [(s, p) for s in (0, 3, 4, 6) for p in (0, 1)]
    assert {e["prompt"] for e in samples} == {"a red square", "a blue square"}
    for e in samples:
        assert (run / "samples").joinpath(e["path"].rsplit("/", 1)[1]).is_file()
        assert e["settings"]["sampler"] == "dpmpp_2m_karras" and e["settings"]["step"] == e["step"]


def test_each_sample_records_what_drew_it_in_its_png_and_events(run):
    last = [e for e in iter_events(run / "events.jsonl") if e["type"] == "sample" and e["prompt_index"] == 1][-1]
    s = metadata.read(last["path"])
    assert s == last["settings"]
    assert (s["prompt"], s["negative_prompt"], s["width"], s["height"], s["steps"], s["seed"], s["guidance_scale"]) == \
        ("a blue square", "green", 72, 64, 4, 7, 5.5)
    assert s["scheduler"]["class"] == "DPMSolverMultistepScheduler" and s["scheduler"]["config"]["use_karras_sigmas"]
    text = Image.open(last["path"]).text["parameters"]
    assert text.startswith("a blue square\nNegative prompt: green\nSteps: 4, Sampler: DPM++ 2M Karras, CFG scale: 5.5, "
                           "Seed: 7, Size: 72x64")


def test_a_plain_diffusers_pipeline_draws_the_final_samples_from_their_recorded_settings(run):
    import diffusers

    pipe = load_base("builtin:tiny-sd", "sd1")
    pipe.load_lora_weights(str(run / "diffusers"))
    finals = [e for e in iter_events(run / "events.jsonl") if e["type"] == "sample" and e["step"] == 6]
    assert len(finals) == 2
    for e in finals:
        s = e["settings"]
        pipe.scheduler = getattr(diffusers, s["scheduler"]["class"]).from_config(s["scheduler"]["config"])
        again = pipe(s["prompt"], negative_prompt=s["negative_prompt"] or None, num_inference_steps=s["steps"],
                     guidance_scale=s["guidance_scale"], width=s["width"], height=s["height"],
                     generator=torch.Generator().manual_seed(s["seed"]), output_type="np").images[0]
        saved = np.asarray(Image.open(e["path"]).convert("RGB"), dtype=np.float32) / 255
        assert np.abs(saved - again).max() <= 2 / 255, e["path"]


def test_intermediate_adaptors_every_n_steps_and_epochs_load_in_both_formats(run):
    events = [e for e in iter_events(run / "events.jsonl") if e["type"] == "adaptor"]
    # every epoch (2 steps: steps 2, 4) and every 4 steps (4, once); never the last step, which is the output
    assert [e["step"] for e in events] == [2, 4]
    from lora_checks import image
    for e in events:
        folder = run / "intermediate" / f"s-step{e['step']:06d}"
        assert e["path"] == str(folder)
        kohya, peft_dir = folder / f"s-step{e['step']:06d}.safetensors", folder / "diffusers"
        assert kohya.is_file() and e["files"]["kohya"] == str(kohya)
        with_kohya, with_diffusers = load_base("builtin:tiny-sd", "sd1"), load_base("builtin:tiny-sd", "sd1")
        with_kohya.load_lora_weights(str(kohya))
        with_diffusers.load_lora_weights(str(peft_dir))
        assert np.abs(image(with_kohya) - image(with_diffusers)).max() < 1e-3
    step2 = load_base("builtin:tiny-sd", "sd1")
    step2.load_lora_weights(str(run / "intermediate" / "s-step000002" / "diffusers"))
    final = load_base("builtin:tiny-sd", "sd1")
    final.load_lora_weights(str(run / "diffusers"))
    assert np.abs(image(step2) - image(final)).max() > 1e-3  # an earlier state, not a copy of the last


# ----------------------------------------------------------------------------- autocast

def _dtypes_seen(pipe, context):
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, output.dtype)  # returns None: the output is left as it is
        return hook

    hooks = [pipe.unet.conv_out.register_forward_hook(record("unet")),
             pipe.vae.decoder.conv_out.register_forward_hook(record("vae"))]
    try:
        with context:
            image = pipe("a red square", num_inference_steps=2, height=64, width=64, output_type="np",
                         generator=torch.Generator().manual_seed(0)).images[0]
    finally:
        for h in hooks:
            h.remove()
    return seen, image


def test_the_vae_decodes_outside_autocast_while_the_unet_runs_in_it():
    """Under fp16 autocast SDXL's VAE overflows to NaN (black samples on a GPU); bf16 here shows the casting."""
    pipe = load_base("builtin:tiny-sd", "sd1")
    plain, _ = _dtypes_seen(pipe, torch.autocast("cpu", dtype=torch.bfloat16))
    assert plain == {"unet": torch.bfloat16, "vae": torch.bfloat16}  # what sampling did before
    ours, image = _dtypes_seen(pipe, pipeline_autocast(pipe, torch.bfloat16))
    assert ours == {"unet": torch.bfloat16, "vae": torch.float32}
    assert torch.isfinite(torch.from_numpy(image)).all()
    assert "decode" not in vars(pipe.vae)  # the pipeline's VAE is itself again afterwards
    full, _ = _dtypes_seen(pipe, pipeline_autocast(pipe, torch.float32))
    assert full == {"unet": torch.float32, "vae": torch.float32}
