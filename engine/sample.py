"""Validation images during training, with a fixed seed so runs can be compared image for image."""
from __future__ import annotations

import io
from pathlib import Path

import torch

from engine.autocast import pipeline_autocast
from engine.config import atomic_write_bytes


@torch.no_grad()
def validation_images(comps, unet, text_encoders, cfg, device, dtype, out_dir: Path, tag: str) -> list[Path]:
    """num_validation_images for cfg.validation_prompt; image i uses seed validation_seed + i."""
    pipe = comps.family.make_pipeline(comps, unet=unet, text_encoders=text_encoders)
    pipe.set_progress_bar_config(disable=True)
    prompt = cfg.validation_prompt
    if cfg.trigger_word and cfg.trigger_word not in prompt:
        prompt = f"{cfg.trigger_word}, {prompt}"
    paths = []
    was_training = [m.training for m in (unet, *text_encoders)]
    for m in (unet, *text_encoders):
        m.eval()
    try:
        for i in range(cfg.num_validation_images):
            gen = torch.Generator(device="cpu").manual_seed(cfg.validation_seed + i)
            with pipeline_autocast(pipe, dtype):
                image = pipe(prompt, num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                             height=cfg.resolution, width=cfg.resolution, generator=gen).images[0]
            path = out_dir / f"{tag}-{i}.png"
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            atomic_write_bytes(path, buf.getvalue())
            paths.append(path)
    finally:
        for m, t in zip((unet, *text_encoders), was_training):
            m.train(t)
    return paths
