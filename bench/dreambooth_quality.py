"""DreamBooth on the toy world (bench.quality calls this for a dreambooth preset): train the preset with and
without prior preservation and judge, over `samples` images each:
- subject_rate: the instance prompt draws the subject (toy-subject: a red circle on white; all four attributes
  as the classifier reads them); subject_rate_strict: and the pixel judge finds a circle in its colours;
- class_subject_leak: plain class prompts that ask for another colour on another background ("a blue circle on
  a pink background") draw the subject's colour or background instead: how far the class drifted to the
  subject;
- class_adherence: those prompts give the asked shape and colour;
- class_prompt_subject_rate: the bare class prompt ("a circle") draws the subject's colour on its background;
- class_drift: how far what the bare class prompt draws (colour and background, as judged) moved from the
  base's: the total variation distance of the two distributions (0 = unchanged, 1 = nothing in common).
Figures are for the base, the run without prior preservation (`no_prior_`) and with it (`prior_`).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

TARGETS = {"prior_subject_rate_strict": 0.9}


def class_prompts(n: int) -> list[str]:
    from engine.builtin.toy import world

    colours = [c for c in world.COLOURS if c != world.SUBJECT.colour]
    backgrounds = [b for b in world.BACKGROUNDS if b != world.SUBJECT.background]
    return [world.caption(world.SUBJECT.shape, colours[i % len(colours)],
                          backgrounds[(i // len(colours)) % len(backgrounds)]) for i in range(n)]


def drift(before: dict[str, float], after: dict[str, float]) -> float:
    """Total variation distance between what the bare class prompt drew before and after: 0 = unchanged,
    1 = nothing in common."""
    return round(0.5 * sum(abs(before.get(k, 0.0) - after.get(k, 0.0)) for k in set(before) | set(after)), 4)


def judge_pipe(pipe, judge, cfg, samples: int, steps: int | None) -> dict:
    from engine.builtin.toy import world
    from engine.builtin.toy.judge import predict
    from engine.builtin.toy.scoring import read, sample

    subject = world.SUBJECT
    readings = read(judge, sample(pipe, [cfg.instance_prompt] * samples, steps), [subject] * samples)
    got = [r.classifier for r in readings]
    prompts = class_prompts(samples)
    seen = predict(judge, sample(pipe, prompts, steps))
    plain = predict(judge, sample(pipe, [cfg.class_prompt or f"a {subject.shape}"] * samples, steps))
    looks: dict[str, float] = {}
    for g in plain:  # what the bare class prompt draws: colour and background, as shares
        key = f"{g['colour']} on {g['background']}"
        looks[key] = looks.get(key, 0.0) + 1.0 / samples
    return {
        "class_prompt_subject_rate": sum(g["colour"] == subject.colour and g["background"] == subject.background
                                         for g in plain) / samples,
        "class_looks": looks,
        "subject_rate": sum(all(g[k] == getattr(subject, k) for k in ("shape", "colour", "background", "fill"))
                            for g in got) / samples,
        "subject_rate_strict": sum(r.sees("shape", subject.shape) and all(
            r.classifier[k] == getattr(subject, k) for k in ("colour", "background", "fill"))
            for r in readings) / samples,
        "class_subject_leak": sum(g["colour"] == subject.colour or g["background"] == subject.background
                                  for g in seen) / samples,
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

    base = judge_pipe(fresh_pipe(), judge, cfg, samples, steps)
    base_looks = base.pop("class_looks")
    result = {f"base_{k}": v for k, v in base.items()}
    with tempfile.TemporaryDirectory(prefix="bench-dreambooth-") as tmp:
        for prefix, prior in (("no_prior_", False), ("prior_", True)):
            # class images of this base, drawn afresh (the preset's class_data_dir may hold another base's)
            run, seconds = train(preset, Path(tmp) / prefix, [f"with_prior_preservation={str(prior).lower()}",
                                                              f"class_data_dir={Path(tmp) / 'class-images'}"])
            log(f"trained {preset} ({prefix[:-1]}) in {seconds:.1f} s")
            pipe = fresh_pipe()
            get_method(cfg.method).load_into_pipeline(pipe, run, cfg)
            judged = judge_pipe(pipe, judge, cfg, samples, steps)
            result[prefix + "class_drift"] = drift(base_looks, judged.pop("class_looks"))
            result.update({prefix + k: v for k, v in judged.items()})
            result[prefix + "train_seconds"] = round(seconds, 1)
    return result


def verdict(r: dict) -> list[str]:
    missed = [f"{k} = {r[k]} (target >= {v})" for k, v in TARGETS.items() if r[k] < v]
    if r["prior_class_drift"] >= r["no_prior_class_drift"]:
        missed.append(f"class drift with prior preservation ({r['prior_class_drift']}) is not lower than without "
                      f"({r['no_prior_class_drift']})")
    return missed
