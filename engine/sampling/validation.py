"""Sample images during training: every prompt line (engine.sampling.prompts), num_validation_images each, image
i of a prompt from seed (the line's --d, else validation_seed) + i, each PNG carrying the settings that drew it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from engine import atomic
from engine.sampling import metadata, prompts, samplers
from engine.sampling.autocast import pipeline_autocast


@dataclass
class Sample:
    path: Path
    prompt: prompts.SamplePrompt  # resolved: every setting filled in
    settings: dict  # what metadata.settings recorded (also in the PNG)


def prompt_kwargs(pipe, family, p, clip_skip: int) -> dict:
    """The pipeline's prompt arguments. With clip_skip > 1 the embeddings are ours (family.encode_prompt, as
    training computes them): diffusers 0.42's own clip_skip reads `text_encoder.text_model`, which transformers 5's
    CLIPTextModel no longer has."""
    if clip_skip <= 1:
        return {"prompt": p.prompt, "negative_prompt": p.negative_prompt or None}
    embed = lambda text: family.encode_prompt([pipe.tokenizer], [pipe.text_encoder], [text], pipe.device,  # noqa: E731
                                              clip_skip)[0]
    return {"prompt_embeds": embed(p.prompt), "negative_prompt_embeds": embed(p.negative_prompt or "")}


def file_name(tag: str, prompt_index: int, image_index: int) -> str:
    return f"{tag}-{image_index}.png" if prompt_index == 0 else f"{tag}-p{prompt_index}-{image_index}.png"


@torch.no_grad()
def validation_images(comps, unet, text_encoders, cfg, device, dtype, out_dir: Path, tag: str,
                      step: int | None = None) -> list[Sample]:
    pipe = comps.family.make_pipeline(comps, unet=unet, text_encoders=text_encoders)
    pipe.set_progress_bar_config(disable=True)
    default_scheduler = pipe.scheduler
    samples = []
    was_training = [m.training for m in (unet, *text_encoders)]
    for m in (unet, *text_encoders):
        m.eval()
    try:
        for line in prompts.parse(cfg.validation_prompt):
            p = prompts.resolved(line, cfg)
            pipe.scheduler = samplers.make_scheduler(p.sampler, default_scheduler)
            for i in range(cfg.num_validation_images):
                gen = torch.Generator(device="cpu").manual_seed(p.seed + i)
                with pipeline_autocast(pipe, dtype):
                    image = pipe(**prompt_kwargs(pipe, comps.family, p, cfg.clip_skip), num_inference_steps=p.steps,
                                 guidance_scale=p.guidance_scale, height=p.height, width=p.width,
                                 generator=gen, **comps.family.call_kwargs(pipe)).images[0]
                drawn = prompts.SamplePrompt(**{**p.__dict__, "seed": p.seed + i})
                s = metadata.settings(drawn, pipe.scheduler, clip_skip=cfg.clip_skip, model=comps.source.name,
                                      step=step)
                path = out_dir / file_name(tag, p.index, i)
                atomic.write_bytes(path, metadata.png_bytes(image, s))
                samples.append(Sample(path, drawn, s))
    finally:
        for m, t in zip((unet, *text_encoders), was_training):
            m.train(t)
    return samples
