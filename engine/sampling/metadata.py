"""What made an image, written into its PNG: enough to draw it again in diffusers, ComfyUI or AUTOMATIC1111.

Two text chunks: `parameters` in AUTOMATIC1111's layout (its PNG Info tab and many viewers read it), and
`adaptor_studio`, JSON with the scheduler's class and full config. The same dict goes into `sample` events.
"""
from __future__ import annotations

import io
import json
import math

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.sampling import samplers

JSON_KEY = "adaptor_studio"


def settings(p, scheduler, *, clip_skip: int = 1, lora_scale: float = 1.0, model: str = "", step: int | None = None,
             adaptor: str = "") -> dict:
    """p: a resolved SamplePrompt; scheduler: the one that drew the image."""
    return {
        "prompt": p.prompt, "negative_prompt": p.negative_prompt, "seed": p.seed, "steps": p.steps,
        "guidance_scale": p.guidance_scale, "width": p.width, "height": p.height, "sampler": p.sampler,
        "scheduler": {"class": type(scheduler).__name__, "config": _plain(scheduler.config)},
        "clip_skip": clip_skip, "lora_scale": lora_scale, "model": model, "adaptor": adaptor, "step": step,
        "prompt_index": p.index,
    }


def _plain(config) -> dict:
    """The config as plain JSON. Non-finite numbers (DPM-Solver's lambda_min_clipped = -inf) are left out: JSON
    cannot hold them, and from_config then takes the class default, which is that value."""
    return {k: v for k, v in json.loads(json.dumps(dict(config), default=str)).items()
            if not (isinstance(v, float) and not math.isfinite(v))}


def a1111_parameters(s: dict) -> str:
    sampler = samplers.display_name(s["sampler"], None) if s["sampler"] in samplers.SAMPLERS else \
        s["scheduler"]["class"]
    parts = [f"Steps: {s['steps']}", f"Sampler: {sampler}", f"CFG scale: {s['guidance_scale']:g}",
             f"Seed: {s['seed']}", f"Size: {s['width']}x{s['height']}"]
    if s.get("model"):
        parts.append(f"Model: {s['model']}")
    if s.get("clip_skip", 1) > 1:
        parts.append(f"Clip skip: {s['clip_skip']}")
    if s.get("adaptor"):
        parts.append(f"Lora: {s['adaptor']}:{s.get('lora_scale', 1.0):g}")
    text = s["prompt"] + (f"\nNegative prompt: {s['negative_prompt']}" if s.get("negative_prompt") else "")
    return text + "\n" + ", ".join(parts)


def png_bytes(image: Image.Image, s: dict) -> bytes:
    info = PngInfo()
    info.add_text("parameters", a1111_parameters(s))
    info.add_text(JSON_KEY, json.dumps(s))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read(path) -> dict:
    """The settings a PNG was drawn with ({} if it has none)."""
    with Image.open(path) as im:
        text = im.text.get(JSON_KEY) if hasattr(im, "text") else None
    return json.loads(text) if text else {}
