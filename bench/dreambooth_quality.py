"""DreamBooth on the toy world (bench.quality calls this for a dreambooth preset): train the preset with and
without prior preservation and judge, over `samples` images each:
- subject_rate: the instance prompt draws the subject (toy-subject: a red striped circle on white; all four
  attributes as judged);
- class_subject_leak: plain class prompts ("a blue circle on a pink background", every colour and background)
  draw the subject's striped fill: how far the class drifted to the subject (the base: ~0);
- class_adherence: those prompts give the asked shape and colour.
Figures are for the base, the run without prior preservation (`no_prior_`) and with it (`prior_`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path


def class_prompts(n: int) -> list[str]:
    from engine.builtin.toy import world

    colours, backgrounds = list(world.COLOURS), list(world.BACKGROUNDS)
    return [world.caption(world.SUBJECT.shape, colours[i % 6], backgrounds[(i // 6) % 4]) for i in range(n)]


def judge_pipe(pipe, judge, cfg, samples: int, steps: int | None) -> dict:
    from engine.builtin.toy import world
    from engine.builtin.toy.build import sample
    from engine.builtin.toy.judge import predict

    subject = world.SUBJECT
    got = predict(judge, sample(pipe, [cfg.instance_prompt] * samples, steps))
    prompts = class_prompts(samples)
    seen = predict(judge, sample(pipe, prompts, steps))
    return {
        "subject_rate": sum(all(g[k] == getattr(subject, k) for k in ("shape", "colour", "background", "fill"))
                            for g in got) / samples,
        "class_subject_leak": sum(g["fill"] == subject.fill for g in seen) / samples,
        "class_adherence": sum(g["shape"] == subject.shape and f" {g['colour']} " in f" {p} "
                               for g, p in zip(seen, prompts)) / samples,
    }


def measure(preset: Path, samples: int, steps: int | None, train, log=print) -> dict:
    from diffusers import StableDiffusionPipeline

    from engine.builtin import resolve_builtin
    from engine.builtin.toy import JUDGE_FILE
    from engine.builtin.toy.judge import load_judge
    from engine.config import load_config
    from engine.methods import get_method

    cfg = load_config(preset)
    base_dir = resolve_builtin(cfg.pretrained_model_name_or_path)
    judge = load_judge(base_dir / JUDGE_FILE)

    def fresh_pipe():
        pipe = StableDiffusionPipeline.from_pretrained(base_dir)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    result = {f"base_{k}": v for k, v in judge_pipe(fresh_pipe(), judge, cfg, samples, steps).items()}
    with tempfile.TemporaryDirectory(prefix="bench-dreambooth-") as tmp:
        for prefix, prior in (("no_prior_", False), ("prior_", True)):
            run, seconds = train(preset, Path(tmp) / prefix, [f"with_prior_preservation={str(prior).lower()}"])
            log(f"trained {preset} ({prefix[:-1]}) in {seconds:.1f} s")
            pipe = fresh_pipe()
            get_method(cfg.method).load_into_pipeline(pipe, run, cfg)
            result.update({prefix + k: v for k, v in judge_pipe(pipe, judge, cfg, samples, steps).items()})
            result[prefix + "train_seconds"] = round(seconds, 1)
    return result
