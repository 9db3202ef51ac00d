"""The toy world, its judge, builtin:toy and the toy presets."""
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from conftest import ROOT, run_training, sets
from engine.builtin import resolve_builtin
from engine.builtin.toy import JUDGE_FILE, REPORT_FILE, SHIPPED, world
from engine.builtin.toy.arch import sampling_scheduler
from engine.builtin.toy.judge import accuracy, load_judge, predict
from engine.config import load_config


def test_the_generator_is_deterministic_by_seed():
    a = world.scenes(20, seed=7, shapes=world.SHAPES, fills=world.FILLS)
    b = world.scenes(20, seed=7, shapes=world.SHAPES, fills=world.FILLS)
    c = world.scenes(20, seed=8, shapes=world.SHAPES, fills=world.FILLS)
    assert a == b and a != c
    assert all(np.array_equal(world.render(x), world.render(y)) for x, y in zip(a, b))
    img = world.render(a[0])
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8


def test_scenes_look_like_their_captions():
    s = world.Scene("square", "red", "white", cx=32, cy=32, r=16)
    img = world.render(s).astype(int)
    assert tuple(img[32, 32]) == world.COLOURS["red"] and tuple(img[1, 1]) == world.BACKGROUNDS["white"]
    assert s.caption() == "a red square on a white background"
    assert world.caption("circle", "orange", "gray") == "an orange circle on a gray background"
    assert world.caption("star", "blue", "black", "striped") == "a striped blue star on a black background"
    striped = world.render(world.Scene("square", "blue", "black", fill="striped", cx=32, cy=32, r=20)).astype(int)
    column = [tuple(p) for p in striped[16:48, 32]]
    assert world.COLOURS["blue"] in column and world.BACKGROUNDS["black"] in column  # bands
    # only the base world goes into builtin:toy's training data
    assert set(world.BASE_SHAPES) == set(world.SHAPES) - {world.NEW_SHAPE}
    assert {x.shape for x in world.scenes(300, seed=1)} == set(world.BASE_SHAPES)
    assert {x.fill for x in world.scenes(300, seed=1)} == {"solid"}


def test_the_committed_example_datasets_are_what_the_generator_writes(tmp_path):
    written = world.write_examples(tmp_path)
    for folder in written:
        shipped = ROOT / "examples" / "datasets" / folder.name
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted(p.name for p in shipped.iterdir())
        assert len([n for n in names if n.endswith(".png")]) == 8
        for n in names:
            assert (folder / n).read_bytes() == (shipped / n).read_bytes(), n
    star = [p.read_text().strip() for p in sorted((ROOT / "examples/datasets/toy-star").glob("*.txt"))]
    assert all(c.endswith(" star on a " + c.split(" on a ")[1]) for c in star)
    assert star[0] == "a red star on a white background"


def test_the_judge_reads_held_out_generated_images():
    judge = load_judge(SHIPPED / JUDGE_FILE)
    acc = accuracy(judge, n=600, seed=999)
    assert all(v >= 0.97 for v in acc.values()), acc
    # the concepts the base never saw are read too
    stars = world.scenes(50, seed=5, shapes=("star",), fills=("solid",))
    assert sum(r["shape"] == "star" for r in predict(judge, [world.render(s) for s in stars])) >= 48
    striped = world.scenes(50, seed=6, fills=("striped",))
    assert sum(r["fill"] == "striped" for r in predict(judge, [world.render_image(s) for s in striped])) >= 48


def test_the_pixel_judge_finds_the_placement_of_a_drawn_scene_and_nothing_in_specks():
    from bench.judge_calibration import specks
    from engine.builtin.toy.pixel_judge import IOU_THRESHOLD, match

    for shape in world.SHAPES:
        for fill in world.FILLS:
            s = world.Scene(shape, "blue", "pink", fill, cx=30.5, cy=35.0, r=14.0)
            m = match(world.render(s), s)
            assert (m.shape, m.fill) == (shape, fill) and m.iou > 0.999, m
            if fill == "solid":  # (a striped edge that falls in a gap row can move a little unseen)
                assert (m.cx, m.cy, m.r) == (30.5, 35.0, 14.0), m
            assert m.clean == 1.0 and m.sees("shape", shape) and m.sees("fill", fill)
    star = world.Scene("star", "red", "white", cx=25.3, cy=40.8, r=17.6)  # off the search grid: still a star
    assert match(world.render(star), star).sees("shape", "star")
    circle = match(world.render(dataclasses.replace(star, shape="circle")), star)
    assert circle.shape == "circle" and not circle.sees("shape", "star") and circle.caption_iou < circle.iou
    on_gray = match(world.render(dataclasses.replace(star, background="gray")), star)  # not what was asked
    assert on_gray.caption_iou < IOU_THRESHOLD and not on_gray.sees("shape", "star")
    rng = np.random.default_rng(0)
    speckled = [match(specks(s, rng), s) for s in world.scenes(20, seed=3, shapes=("star",))]
    assert not any(m.sees("shape", "star") for m in speckled) and max(m.iou for m in speckled) < 0.5


def test_builtin_toy_loads_offline_and_draws_a_64px_image():
    from diffusers import StableDiffusionPipeline

    folder = resolve_builtin("builtin:toy")
    assert folder == SHIPPED
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    assert pipe.vae_scale_factor * pipe.unet.config.sample_size == 64
    out = pipe("a red circle on a white background", num_inference_steps=3,
               generator=torch.Generator().manual_seed(0)).images[0]
    assert out.size == (64, 64)
    size = sum(p.stat().st_size for p in SHIPPED.rglob("*") if p.is_file())
    assert size <= 40 * 2**20, size
    report = json.loads((SHIPPED / REPORT_FILE).read_text())
    # the build's own check: held-out prompts and seeds, the shipped sampler (the recipe's, as shipped) at
    # builtin:toy's guidance; a trigger-like word in front of the prompt must not knock it off its world
    for judged in ("quality", "quality_with_unknown_words"):
        assert all(report[judged][k] >= 0.97 for k in ("shape", "colour", "background", "strict")), report[judged]
    assert report["build_seconds"] <= 90 * 60 and report["stage3_steps"] > 0
    settings = {k: v for k, v in sampling_scheduler().config.items() if not k.startswith("_")}
    assert {k: pipe.scheduler.config[k] for k in settings} == settings


def test_builtin_toy_draws_what_it_is_asked_even_after_a_trigger_word():
    """Drawn here, not read from the report: 8 held-out prompts, two of each shape, half after an unknown word
    ("sks, ..." as a LoRA's trigger puts it), with the shipped sampler and guidance, read by the toy judge."""
    from diffusers import StableDiffusionPipeline

    from engine.builtin.toy.judge import load_judge, predict
    from engine.builtin.toy.scoring import PREFIXES, sample

    pipe = StableDiffusionPipeline.from_pretrained(SHIPPED, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    scenes = [world.Scene(shape=s, colour=c, background=b) for s, c, b in zip(
        [s for s in world.BASE_SHAPES for _ in (0, 1)], ["red", "blue", "green", "yellow", "purple", "orange",
                                                         "red", "blue"], ["white", "black", "gray", "pink"] * 2)]
    prompts = [(PREFIXES[i % 4] if i % 2 else "") + s.caption() for i, s in enumerate(scenes)]
    read = predict(load_judge(SHIPPED / JUDGE_FILE), sample(pipe, prompts, seed=1000))
    right = [r["shape"] == s.shape and r["colour"] == s.colour and r["background"] == s.background
             for r, s in zip(read, scenes)]
    assert sum(right) >= 7, list(zip(prompts, read))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["toy-lora.toml", "toy-style-lora.toml", "toy-dit-lora.toml"])
def test_each_toy_preset_trains_and_the_quality_bench_reads_it(tmp_path, preset):
    import subprocess
    import sys

    path = ROOT / "presets" / preset
    cfg = load_config(path)
    assert cfg.pretrained_model_name_or_path in ("builtin:toy", "builtin:toy-dit") and cfg.trigger_word == "sks"
    out = tmp_path / "runs"
    run_training([str(path)] + sets(max_train_steps=3, output_dir=out, num_validation_images=1, validation_epochs=1,
                                    num_inference_steps=2))
    run = out / cfg.adaptor_name
    assert (run / f"{cfg.adaptor_name}.safetensors").is_file()
    # one sample an epoch (and none twice at the last): 8 images make 8 / batch steps an epoch
    epochs = math.ceil(3 / math.ceil(8 / cfg.train_batch_size))
    assert len(list((run / "samples").glob("*.png"))) == epochs
    proc = subprocess.run([sys.executable, "-m", "bench.quality", "--preset", str(path), "--adaptor", str(run),
                           "--samples", "2", "--steps", "2", "--json", "--examples", str(tmp_path / "examples.png")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(figures)[:6] == ["base_concept_rate", "adaptor_concept_rate", "adaptor_trigger_concept_rate",
                                 "base_adherence", "adaptor_adherence", "train_seconds"]
    strict = ["base_concept_rate_pixel", "adaptor_concept_rate_pixel", "adaptor_trigger_concept_rate_pixel",
              "base_concept_rate_strict", "adaptor_concept_rate_strict", "adaptor_trigger_concept_rate_strict",
              "adaptor_trigger_iou", "base_colour", "adaptor_colour", "base_background", "adaptor_background",
              "base_adherence_strict", "adaptor_adherence_strict"]
    assert list(figures)[6:] == strict and figures["train_seconds"] == 0.0
    assert all(0.0 <= v <= 1.0 for k, v in figures.items() if k != "train_seconds")
    for who in ("base", "adaptor", "adaptor_trigger"):  # the strict judge is the classifier and the pixel judge
        assert figures[f"{who}_concept_rate_strict"] <= min(figures[f"{who}_concept_rate"],
                                                            figures[f"{who}_concept_rate_pixel"])
    assert (tmp_path / "examples.png").is_file()


@pytest.mark.slow
def test_the_build_command_runs_every_stage_is_deterministic_and_resumes(tmp_path):
    """`python -m engine.builtin.toy build` end to end, at smoke size: a second build from nothing writes the
    same weights and data; --resume reuses finished stages."""
    import subprocess
    import sys

    def build(name: str, *extra: str):
        cmd = [sys.executable, "-m", "engine.builtin.toy", "build", "--smoke", "--out", str(tmp_path / name),
               "--work", str(tmp_path / f"{name}-work"), *extra]
        return cmd, subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)

    cmd, first = build("model")
    assert first.returncode == 0, first.stderr[-3000:]
    _, second = build("model-2")
    assert second.returncode == 0, second.stderr[-3000:]
    weights = sorted(p.relative_to(tmp_path / "model") for p in (tmp_path / "model").rglob("*.safetensors"))
    assert len(weights) == 4  # vae, unet, text encoder, judge
    for rel in weights:
        assert (tmp_path / "model" / rel).read_bytes() == (tmp_path / "model-2" / rel).read_bytes(), rel
    for caption in (tmp_path / "model-work" / "data").glob("*.txt"):
        assert caption.read_text() == (tmp_path / "model-2-work" / "data" / caption.name).read_text()
    report = json.loads((tmp_path / "model" / REPORT_FILE).read_text())
    stages = {"vae", "judge", "data", "stage1", "stage2", "noisy captions", "stage3", "quality"}
    assert set(report["stage_seconds"]) == set(report["stage_cpu_seconds"]) == stages
    assert json.loads((tmp_path / "model" / "model_index.json").read_text())["scheduler"][1] == "DPMSolverMultistepScheduler"
    assert (tmp_path / "model" / JUDGE_FILE).is_file()
    _, again = build("model", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing the finished stage") == 7  # all but the quality check
    refused = subprocess.run(cmd[:4] + ["--smoke"], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 2 and "--smoke needs --out" in refused.stderr


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "presets").glob("toy-*.toml") if "dit" not in p.name))
def test_the_toy_presets_sample_at_builtin_toys_guidance(preset):
    from engine.builtin.toy.arch import GUIDANCE

    cfg = load_config(ROOT / "presets" / preset)
    assert cfg.pretrained_model_name_or_path == "builtin:toy" and cfg.guidance_scale == GUIDANCE
