"""Build builtin:toy from nothing: a VAE, a judge, a dataset, then the UNet and text encoder trained from
scratch by the engine itself (method = "full"), then a quality check by the judge.

    python -m engine.builtin.toy build [--out DIR] [--work DIR] [--resume] [--smoke]

Writes the pipeline folder and the judge next to this file (they are committed; see SHIPPED) unless --out
says otherwise, plus build_report.json with every figure the build measured.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from engine import atomic
from engine.builtin.toy import JUDGE_FILE, REPORT_FILE, SHIPPED, world
from engine.builtin.toy.arch import TOY_WORDS, make_text_encoder, make_unet, sampling_scheduler
from engine.builtin.toy.scoring import adherence

NUM_TRAIN_IMAGES = 16000
DEFAULT_STEPS = 1800  # stage 1
STAGE2_STEPS = 1200
STAGE3_STEPS = 3500


def save_initial_pipeline(path: Path, vae) -> None:
    """The trained VAE with a random UNet and text encoder: the base that full training starts from."""
    from diffusers import StableDiffusionPipeline

    from engine.builtin.tiny import build_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tokenizer = build_tokenizer(extra_words=TOY_WORDS)
        pipe = StableDiffusionPipeline(
            unet=make_unet(), vae=vae, text_encoder=make_text_encoder(tokenizer), tokenizer=tokenizer,
            scheduler=sampling_scheduler(),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)


def training_config(data_dir: Path, base: Path, runs: Path, steps: int):
    """The engine's own settings for training the UNet and text encoder from scratch. Both stages name the
    same VAE folder, so stage 2 reuses stage 1's cached latents."""
    from engine.config import validate

    return validate({
        "pretrained_model_name_or_path": str(base), "method": "full", "train_text_encoder": True,
        "pretrained_vae_model_name_or_path": str(Path(data_dir).parent / "vae"),
        "train_data_dir": str(data_dir), "resolution": world.SIZE, "cache_latents": True, "center_crop": True,
        "caption_dropout_rate": 0.1, "train_batch_size": 32, "max_train_steps": steps,
        "learning_rate": 1e-3, "lr_scheduler": "cosine", "lr_warmup_steps": 100, "snr_gamma": 5.0,
        "adam_weight_decay": 0.0, "seed": 0, "report_to": "none", "output_dir": str(runs), "adaptor_name": "toy",
        "checkpointing_steps": 300, "checkpoints_total_limit": 1, "logging_steps": 10, "overwrite": True,
        "validation_prompt": "a red circle on a white background", "num_validation_images": 0,
    })


def second_stage_config(data_dir: Path, base: Path, runs: Path, steps: int):
    """Stage 2 continues from stage 1's model with a fresh, lower cosine cycle (a warm restart): on two CPU
    cores this gets more out of the hour than one long cycle of the same length."""
    return training_config(data_dir, base, runs, steps).replace(learning_rate=5e-4, lr_warmup_steps=50, seed=1,
                                                                 adaptor_name="toy-2")


def third_stage_config(data_dir: Path, base: Path, runs: Path, steps: int):
    """Stage 3 polishes stage 2's model on captions with unknown words and missing parts (captions.py), so a
    trigger word does not knock the base off its world, with one more low cosine cycle and an EMA of the UNet
    (the EMA is what gets saved)."""
    return training_config(data_dir, base, runs, steps).replace(
        learning_rate=3e-4, lr_warmup_steps=50, seed=2, use_ema=True, ema_decay=0.999, adaptor_name="toy-3")


# (vae steps, judge steps, training images, stage 1, 2 and 3 steps, judged images): the real recipe, and a
# smoke test of every stage
RECIPE = {"full": (1500, 700, NUM_TRAIN_IMAGES, DEFAULT_STEPS, STAGE2_STEPS, STAGE3_STEPS, 192),
          "smoke": (4, 4, 32, 3, 2, 2, 2)}


class Stages:
    """Each stage's output lives in the work folder with its timing; with resume, finished stages are reused,
    so an interrupted hour-long build picks up where it stopped."""

    def __init__(self, work: Path, resume: bool, log):
        self.file, self.log = work / "stages.json", log
        self.done = json.loads(self.file.read_text()) if resume and self.file.is_file() else {}

    def run(self, name: str, fn, *outputs: Path, always: bool = False) -> dict:
        if not always and name in self.done and all(p.exists() for p in outputs):
            self.log(f"{name}: reusing the finished stage ({self.done[name]['seconds']:.0f} s when it ran)")
            return self.done[name]["info"]
        t, cpu = time.time(), _cpu_seconds()
        info = fn() or {}
        self.done[name] = {"seconds": round(time.time() - t, 1), "cpu_seconds": round(_cpu_seconds() - cpu, 1),
                           "info": info}
        self.file.write_text(json.dumps(self.done, indent=2))
        return info

    def seconds(self, key: str = "seconds") -> dict[str, float]:
        return {k: v.get(key, 0.0) for k, v in self.done.items()}


def data_stage(stages: Stages, data: Path, base: Path, num_images: int, save_initial) -> None:
    """The training images (seed 1) and the untrained pipeline `save_initial(base)` writes: every build's
    "data" stage."""
    def run():
        shutil.rmtree(data, ignore_errors=True)
        world.write_dataset(data, world.scenes(num_images, seed=1))
        shutil.rmtree(base, ignore_errors=True)
        save_initial(base)

    stages.run("data", run, data, base / "model_index.json")


def write_noisy_dataset(folder: Path, num_images: int) -> None:
    """The data stage's scenes (seed 1) with captions.py's training captions (seed 3)."""
    from engine.builtin.toy.captions import training_captions

    shutil.rmtree(folder, ignore_errors=True)
    items = world.scenes(num_images, seed=1)
    world.write_dataset(folder, items, captions=training_captions(items, seed=3))


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children: on a shared machine, wall time measures the
    neighbours too; CPU time / threads is what the stage would take alone."""
    import resource

    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def write_model(out: Path, pipe, judge, report: dict) -> None:
    """The pipeline, the judge and the report into `out`, atomically: a half-written model must never be what a
    built-in name resolves to."""
    from engine.builtin.toy.judge import save_judge

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic.temp_dir(out.parent, out.name)
    try:
        pipe.save_pretrained(tmp / "model", safe_serialization=True)
        save_judge(judge, tmp / "model" / JUDGE_FILE)
        (tmp / "model" / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        atomic.normal_modes(tmp / "model")  # safetensors writes 0600 files
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp / "model", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build(out: Path = SHIPPED, work: Path | None = None, recipe: str = "full", resume: bool = False,
          log=print) -> dict:
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    from engine.builtin.toy.judge import accuracy, load_judge, save_judge, train_judge
    from engine.builtin.toy.vae import train_vae
    from engine.loop import train
    from engine.paths import cache_root

    work = Path(work or cache_root() / "toy-build")
    work.mkdir(parents=True, exist_ok=True)
    vae_steps, judge_steps, num_images, steps1, steps2, steps3, n = RECIPE[recipe]
    stages = Stages(work, resume, log)
    data, base, runs = work / "data", work / "initial", work / "runs"

    def vae_stage():
        vae, info = train_vae(steps=vae_steps, log=log)
        vae.save_pretrained(work / "vae", safe_serialization=True)
        return info

    vae_info = stages.run("vae", vae_stage, work / "vae")
    vae = AutoencoderKL.from_pretrained(work / "vae")

    def judge_stage():
        judge = train_judge(steps=judge_steps, vae=vae, log=log)
        save_judge(judge, work / JUDGE_FILE)
        held_out = 2000 if recipe == "full" else 20
        return {"judge_accuracy": accuracy(judge, n=held_out),
                "judge_accuracy_vae_round_trip": accuracy(judge, n=held_out, vae=vae)}

    judge_info = stages.run("judge", judge_stage, work / JUDGE_FILE)
    judge = load_judge(work / JUDGE_FILE)
    log(f"judge accuracy: {judge_info['judge_accuracy']}, after the VAE: {judge_info['judge_accuracy_vae_round_trip']}")

    data_stage(stages, data, base, num_images, lambda path: save_initial_pipeline(path, vae))
    batch = {"train_batch_size": min(32, num_images)}
    stage1 = runs / "toy" / "diffusers"
    stages.run("stage1", lambda: train(training_config(data, base, runs, steps1).replace(**batch)) and None,
               stage1 / "model_index.json")
    stage2 = runs / "toy-2" / "diffusers"
    stages.run("stage2", lambda: train(second_stage_config(data, stage1, runs, steps2).replace(**batch)) and None,
               stage2 / "model_index.json")

    noisy = work / "data-noisy"  # the same images, captions with unknown words (seeded: the build stays exact)
    stages.run("noisy captions", lambda: write_noisy_dataset(noisy, num_images), noisy)
    stage3 = runs / "toy-3" / "diffusers"
    stages.run("stage3", lambda: train(third_stage_config(noisy, stage2, runs, steps3).replace(**batch)) and None,
               stage3 / "model_index.json")

    pipe = StableDiffusionPipeline.from_pretrained(stage3)  # stored in fp32
    pipe.scheduler = sampling_scheduler()
    pipe.set_progress_bar_config(disable=True)
    quality = stages.run("quality", lambda: {"quality": adherence(pipe, judge, n=n), "quality_with_unknown_words":
                                             adherence(pipe, judge, n=n, prefixed=True)}, always=True)
    log(f"quality (judged, {n} prompts, the shipped sampler and its default steps): {quality}")
    seconds = stages.seconds()
    report = {"recipe": recipe, "torch_threads": torch.get_num_threads(), "train_images": num_images,
              "stage1_steps": steps1, "stage2_steps": steps2, "stage3_steps": steps3, **vae_info, **judge_info,
              **quality,
              "stage_seconds": seconds, "build_seconds": round(sum(seconds.values()), 1),
              "stage_cpu_seconds": stages.seconds("cpu_seconds")}

    write_model(out, pipe, judge, report)
    log(f"builtin:toy written to {out}; the stages took {report['build_seconds']:.0f} s in all")
    return report
