"""Build builtin:toy-dit: a small Flux.1 transformer trained from scratch by flow matching, by the engine itself
(method = "full"), over builtin:toy's trained VAE and CLIP (see dit_arch.py), then judged by builtin:toy's judge.

    python -m engine.builtin.toy build-dit [--out DIR] [--work DIR] [--resume] [--smoke]

Writes the pipeline folder, a copy of the judge and build_report.json (every figure the build measured) to
SHIPPED_DIT next to this file unless --out says otherwise (committed: builtin:toy-dit). The training is sized to
take at most 30 minutes of two CPU cores (its CPU time / threads, in the report): one cosine cycle of 5000 steps of
32 images, 3284 CPU-s. Judged over 96 held-out prompts it draws the prompt's shape 0.98 of the time, colour and
background 1.0 (chance 0.25, 0.17, 0.25). Three shorter warm-restart cycles (4500 steps of 16 images, the
CLIP trained too) drew blobs, shape 0.41; one long cycle with 2.2 times the images draws the shapes.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.builtin.toy import JUDGE_FILE, REPORT_FILE, SHIPPED, SHIPPED_DIT, world
from engine.builtin.toy.build import Stages, data_stage, write_model
from engine.builtin.toy.dit_arch import save_initial_pipeline
from engine.builtin.toy.scoring import adherence

# (training images, each training stage's steps, batch, judged images, their sampling steps: None = the pipeline's
# default): the real recipe, and a smoke test of every stage
RECIPE = {"full": (16000, (5000,), 32, 96, None), "smoke": (32, (3, 2), 8, 2, 2)}
LEARNING_RATE = 1e-3


def training_config(data_dir: Path, base: Path, runs: Path, steps: int, batch: int):
    """The engine's settings for training the transformer from scratch."""
    from engine.config import validate

    return validate({
        "pretrained_model_name_or_path": str(base), "method": "full", "train_data_dir": str(data_dir),
        # builtin:toy's CLIP and the random T5 stay frozen and cached: colour and background came out as well as
        # with the CLIP trained (0.99, 1.0), and each step is ~20% cheaper. Every stage names the initial VAE
        # folder (the VAE is not trained), so later stages reuse the cached latents
        "pretrained_vae_model_name_or_path": str(Path(data_dir).parent / "initial" / "vae"), "resolution": world.SIZE,
        "cache_latents": True, "cache_text_encoder_outputs": True, "center_crop": True, "caption_dropout_rate": 0.1,
        "train_batch_size": batch,
        "max_train_steps": steps, "learning_rate": LEARNING_RATE, "lr_scheduler": "cosine", "lr_warmup_steps": 50,
        "weighting_scheme": "logit_normal", "adam_weight_decay": 0.0, "seed": 0, "report_to": "none",
        "output_dir": str(runs), "adaptor_name": "toy-dit", "checkpointing_steps": 500,
        "checkpoints_total_limit": 1, "logging_steps": 10, "overwrite": True,
        "validation_prompt": "a red circle on a white background", "num_validation_images": 0,
    })


def next_stage_config(data_dir: Path, base: Path, runs: Path, steps: int, batch: int, stage: int):
    """Stage 2, 3, ... continue from the stage before with a fresh, lower cosine cycle (warm restarts, as
    builtin:toy's build does)."""
    return training_config(data_dir, base, runs, steps, batch).replace(
        learning_rate=LEARNING_RATE / 2, lr_warmup_steps=50, seed=stage - 1,
        adaptor_name=f"toy-dit-{stage}")


def build(out: Path = SHIPPED_DIT, work: Path | None = None, recipe: str = "full", resume: bool = False,
          toy: Path = SHIPPED, log=print) -> dict:
    from diffusers import FluxPipeline

    from engine.builtin.toy.judge import load_judge
    from engine.loop import train
    from engine.paths import cache_root

    work = Path(work or cache_root() / "toy-dit-build")
    work.mkdir(parents=True, exist_ok=True)
    num_images, stage_steps, batch, n, sample_steps = RECIPE[recipe]
    stages = Stages(work, resume, log)
    data, base, runs = work / "data", work / "initial", work / "runs"
    judge = load_judge(toy / JUDGE_FILE)

    data_stage(stages, data, base, num_images, lambda path: save_initial_pipeline(path, toy))
    batch = min(batch, num_images)
    trained = base
    for i, steps in enumerate(stage_steps, start=1):
        cfg = (training_config(data, base, runs, steps, batch) if i == 1 else
               next_stage_config(data, trained, runs, steps, batch, i))
        trained = runs / cfg.adaptor_name / "diffusers"
        stages.run("train" if i == 1 else f"train{i}", lambda: train(cfg) and None, trained / "model_index.json")

    pipe = FluxPipeline.from_pretrained(trained)  # stored in fp32
    pipe.set_progress_bar_config(disable=True)
    judged = dict(n=n, steps=sample_steps)
    quality = stages.run("quality", lambda: {
        "quality": adherence(pipe, judge, **judged),
        "quality_with_unknown_words": adherence(pipe, judge, **judged, prefixed=True)}, always=True)
    log(f"quality (judged, {n} prompts, the sampler and call settings of dit_arch.call_kwargs): {quality}")
    chance = {"shape": 1 / len(world.BASE_SHAPES), "colour": 1 / len(world.COLOURS),
              "background": 1 / len(world.BACKGROUNDS)}
    seconds = stages.seconds()
    report = {"recipe": recipe, "torch_threads": torch.get_num_threads(), "train_images": num_images,
              "stage_steps": list(stage_steps), "train_batch_size": batch,
              "transformer_parameters": sum(p.numel() for p in pipe.transformer.parameters()), **quality,
              "chance": {k: round(v, 4) for k, v in chance.items()},
              "stage_seconds": seconds, "build_seconds": round(sum(seconds.values()), 1),
              "stage_cpu_seconds": stages.seconds("cpu_seconds")}
    write_model(out, pipe, judge, report)
    log(f"builtin:toy-dit written to {out}; the stages took {report['build_seconds']:.0f} s in all")
    return report
