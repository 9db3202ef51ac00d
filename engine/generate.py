"""Image generation with a trained adaptor: the Compare tab's grid (base | adaptor | adaptor + trigger word),
img2img and inpainting, in-process and as a CLI. engine/gen_worker.py serves the same calls from a
long-lived process that keeps the base model loaded (`python -m engine.generate --serve`).

An adaptor is a run folder (base model, trigger word and method read from its config.toml) or a LoRA
.safetensors file in kohya or diffusers format (then the base model is given). A LoRA is loaded for one
request and unloaded after, so the base column is always the true base. Every cell of a row uses the same
seed, on a CPU generator so a seed gives the same noise on every device.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps
from PIL.PngImagePlugin import PngInfo

from engine.sampling.autocast import pipeline_autocast
from engine.adaptor_ref import Adaptor, ModelRef, resolve_adaptor, run_settings  # noqa: F401 (engine.generate's API)
from engine.config import ConfigError, atomic_write_bytes
from engine.families import ModelError, get_family, pipeline_call_kwargs
from engine.gen_worker import GenerationError
from engine.lora_load import load_lora

ADAPTER_NAME = "compare"


# ----------------------------------------------------------------------------- loaded pipelines

def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on GPUs that have it (SDXL's VAE overflows in fp16, not in bf16), else fp16; fp32 on CPU."""
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in table:
        raise GenerationError(f"dtype = {name!r}: use auto, fp32, fp16 or bf16")
    return table[name]


@dataclass
class PipeCache:
    """Loaded pipelines by slot ("base", "adaptor" for full runs), one model per slot: asking a slot for
    another model replaces the one it held. `loads` counts loads, so callers can see a cache hit."""
    device: torch.device = field(default_factory=default_device)
    slots: dict[str, tuple] = field(default_factory=dict)
    loads: int = 0

    def get(self, ref: ModelRef, dtype: torch.dtype, slot: str = "base", applied=None):
        """`applied` = (key, fn): a copy of the model with fn(pipe) applied once (an adaptor that changes the
        pipeline in ways it cannot undo, e.g. new tokens), cached under that key."""
        key = (ref, _stamp(ref.pretrained_model_name_or_path), str(dtype), str(self.device),
               applied[0] if applied else None)
        held = self.slots.get(slot)
        if held and held[0] == key:
            return held[1]
        if held:  # free the old model before loading the next one
            del self.slots[slot], held
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        family, source = get_family(ref)
        pipe = family.make_pipeline(family.load(source, ref, dtype)).to(self.device)
        pipe.set_progress_bar_config(disable=True)
        if applied:
            applied[1](pipe)
        self.slots[slot] = (key, pipe)
        self.loads += 1
        return pipe


def _stamp(name: str) -> float | None:
    """A local model's modification time, so a retrained folder is loaded again rather than served stale."""
    p = Path(name).expanduser()
    marker = p / "model_index.json" if p.is_dir() else p
    return marker.stat().st_mtime if marker.exists() else None


@contextlib.contextmanager
def lora_applied(pipe, adaptor: Adaptor, scale: float):
    """The LoRA on the pipeline for the block, removed after even on errors (the next base image is true)."""
    if pipe.get_list_adapters():
        pipe.unload_lora_weights()
    try:
        try:
            load_lora(pipe, adaptor.path, ADAPTER_NAME)
        except Exception as e:
            raise GenerationError(f"could not apply the LoRA {adaptor.path} to "
                                  f"{adaptor.base.pretrained_model_name_or_path!r}: {str(e).splitlines()[0][:300]}. "
                                  "Is it made for this base model's family?") from None
        pipe.set_adapters([ADAPTER_NAME], [float(scale)])
        yield pipe
    finally:
        pipe.unload_lora_weights()


@contextlib.contextmanager
def adaptor_pipeline(cache: PipeCache, adaptor: Adaptor, dtype, scale: float):
    if adaptor.kind == "full":
        yield cache.get(ModelRef(str(adaptor.path)), dtype, slot="adaptor")
    elif adaptor.kind == "method":
        yield cache.get(adaptor.base, dtype, slot="adaptor", applied=(
            (str(adaptor.path), _stamp(str(adaptor.path / "config.toml")), scale),
            lambda pipe: _apply_run(pipe, adaptor.path, scale)))
    else:
        with lora_applied(cache.get(adaptor.base, dtype), adaptor, scale) as pipe:
            yield pipe


def _apply_run(pipe, run_dir: Path, scale: float) -> None:
    from engine.config import load_config
    from engine.methods import get_method

    cfg = load_config(run_dir / "config.toml")
    try:
        get_method(cfg.method).load_into_pipeline(pipe, run_dir, cfg, scale)
    except Exception as e:
        raise GenerationError(f"could not apply the run {run_dir} ({cfg.method}): {str(e).splitlines()[0][:300]}")


@torch.no_grad()
def _prompt_args(pipe, prompt: str, settings: dict, clip_skip: int) -> dict:
    """The prompt and sampling arguments; with clip_skip > 1 the prompt embeddings are computed as training and
    the validation samples compute them (engine.sampling.validation.prompt_kwargs)."""
    if clip_skip <= 1:
        return {"prompt": prompt, **settings}
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise GenerationError(f"clip_skip = {clip_skip} applies to SD 1.x/2.x; SDXL already uses the text "
                              "encoders' layer before the last: use clip_skip 1")
    from types import SimpleNamespace

    from engine.families import FAMILIES
    from engine.sampling.validation import prompt_kwargs
    text = SimpleNamespace(prompt=prompt, negative_prompt=settings.get("negative_prompt"))
    rest = {k: v for k, v in settings.items() if k != "negative_prompt"}
    return {**prompt_kwargs(pipe, FAMILIES["sd1"], text, clip_skip), **rest}


def _generate(pipe, prompt: str, seed: int, settings: dict, dtype, on_step=None, clip_skip: int = 1) -> Image.Image:
    """One image; on_step(n) after each of its denoising steps."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    if on_step is not None:
        def step_end(_pipe, i, _t, kwargs):
            on_step(i + 1)
            return kwargs
        settings = {**settings, "callback_on_step_end": step_end}
    with pipeline_autocast(pipe, dtype):
        return pipe(generator=gen, **_prompt_args(pipe, prompt, settings, clip_skip),
                    **pipeline_call_kwargs(pipe)).images[0]


def warm() -> None:
    """Import what the first request needs (diffusers' models and pipelines, transformers' CLIP, peft): most
    of a first comparison's wait on a CPU machine. Loads no model, so it holds no GPU memory."""
    import peft  # noqa: F401
    from diffusers import (AutoencoderKL, AutoPipelineForImage2Image, AutoPipelineForInpainting,  # noqa: F401
                           DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTokenizer  # noqa: F401


def with_trigger(prompt: str, trigger: str) -> str:
    """"trigger, prompt" as training writes captions; a prompt that already has it is left alone."""
    return prompt if not trigger or trigger in prompt else f"{trigger}, {prompt}" if prompt else trigger


# ----------------------------------------------------------------------------- checks and output

def _check(name: str, value, lo, hi):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not lo <= value <= hi:
        raise GenerationError(f"{name} = {value!r} must be a number from {lo} to {hi}")
    return value


def _clip_skip(value: int | None, ad: Adaptor) -> int:
    """The one asked for, else the run's own."""
    return ad.clip_skip if value is None else int(_check("clip_skip", value, 1, 12))


def _check_size(name: str, value: int | None) -> int | None:
    if value is not None and (not isinstance(value, int) or value % 8 or not 64 <= value <= 4096):
        raise GenerationError(f"{name} = {value!r} must be a multiple of 8 from 64 to 4096")
    return value


def _sampling(negative_prompt: str, steps: int, guidance: float) -> dict:
    _check("steps", steps, 1, 500)
    _check("guidance", guidance, 0.0, 100.0)
    return {"negative_prompt": negative_prompt or None, "num_inference_steps": int(steps),
            "guidance_scale": float(guidance)}


def _png_bytes(image: Image.Image, params: dict | None = None) -> bytes:
    info = None
    if params is not None:
        info = PngInfo()
        info.add_text("parameters", json.dumps(params, default=str))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(image: Image.Image, path: Path, params: dict | None = None) -> Path:
    atomic_write_bytes(path, _png_bytes(image, params))
    return path


def draw_grid(cells: list[list[Image.Image]], headers: list[str]) -> tuple[Image.Image, int]:
    """Rows of equal cells under one header strip; returns the grid and the strip's height."""
    w, h = cells[0][0].size
    font = ImageFont.load_default(size=max(10, min(24, w // 10)))
    top, bottom = font.getbbox("Ag")[1], font.getbbox("Ag")[3]
    header = bottom - top + 8
    grid = Image.new("RGB", (w * len(headers), header + h * len(cells)), "white")
    draw = ImageDraw.Draw(grid)
    for c, text in enumerate(headers):
        while len(text) > 1 and draw.textlength(text, font=font) > w - 4:
            text = text[:-2] + "…"
        draw.text((c * w + (w - draw.textlength(text, font=font)) / 2, 4 - top), text, fill="black", font=font)
    for r, row in enumerate(cells):
        for c, img in enumerate(row):
            grid.paste(img.convert("RGB"), (c * w, header + r * h))
    return grid, header


def _clean_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        prompts = prompts.splitlines()
    lines = [p.strip() for p in prompts if isinstance(p, str) and p.strip()]
    if not lines:
        raise GenerationError("give at least one prompt (one per line)")
    if len(lines) > 64:
        raise GenerationError(f"{len(lines)} prompts: at most 64 rows in one grid")
    return lines


# ----------------------------------------------------------------------------- the three requests

def compare_grid(base: str | None, adaptor: str | Path, prompts: list[str], *, trigger: str | None = None,
                 negative_prompt: str = "", seed: int = 0, steps: int = 20, guidance: float = 7.5,
                 width: int | None = None, height: int | None = None, lora_scale: float = 1.0, out: Path,
                 pipe_cache: PipeCache | None = None, vae: str | None = None, dtype: str = "auto",
                 progress=None, clip_skip: int | None = None) -> dict:
    """One PNG grid, a row per prompt: base | adaptor | adaptor + trigger word (no third column without a
    trigger word). Each cell is also saved, under `<out stem>-cells/`, as soon as it is drawn.

    progress(event), when given, hears {"prompts", "columns", "steps"} once, then per cell {"cell": [row, col],
    "step": n, "steps": N} after each denoising step and {"cell": [row, col], "done": path, "size": [w, h]}."""
    prompts = _clean_prompts(prompts)
    _check("seed", seed, 0, 2**63 - 1)
    _check("lora_scale", lora_scale, -10.0, 10.0)
    ad = resolve_adaptor(adaptor, base, trigger, vae)
    skip = _clip_skip(clip_skip, ad)
    cache = pipe_cache or PipeCache()
    torch_dtype = resolve_dtype(dtype, cache.device)
    res = ad.resolution
    settings = {**_sampling(negative_prompt, steps, guidance), "width": _check_size("width", width) or res,
                "height": _check_size("height", height) or res}
    columns = ["base", "adaptor"] + ([f"adaptor + {ad.trigger}"] if ad.trigger else [])
    report = progress or (lambda event: None)
    report({"prompts": prompts, "columns": columns, "steps": settings["num_inference_steps"]})
    out = Path(out)
    cell_dir = out.parent / f"{out.stem}-cells"
    rows: list[list[Image.Image]] = [[] for _ in prompts]
    cells: list[list[str]] = [[] for _ in prompts]

    def cell(pipe, r: int, prompt: str) -> None:
        c = len(rows[r])
        img = _generate(pipe, prompt, seed, settings, torch_dtype, clip_skip=skip,
                        on_step=lambda n: report({"cell": [r, c], "step": n, "steps": settings["num_inference_steps"]}))
        rows[r].append(img)
        cells[r].append(str(save_png(img, cell_dir / f"r{r}-c{c}.png")))
        report({"cell": [r, c], "done": cells[r][c], "size": list(img.size)})

    base_pipe = cache.get(ad.base, torch_dtype)
    for r, p in enumerate(prompts):
        cell(base_pipe, r, p)
    with adaptor_pipeline(cache, ad, torch_dtype, lora_scale) as pipe:
        for r, p in enumerate(prompts):
            cell(pipe, r, p)
            if ad.trigger:
                cell(pipe, r, with_trigger(p, ad.trigger))
    grid, header = draw_grid(rows, columns)
    params = {"base": ad.base.pretrained_model_name_or_path, "adaptor": str(adaptor), "prompts": prompts,
              "columns": columns, "trigger": ad.trigger, "seed": seed, "lora_scale": lora_scale, "clip_skip": skip,
              **settings}
    save_png(grid, out, params)
    return {"grid": str(out), "rows": len(prompts), "cols": len(columns), "columns": columns, "trigger": ad.trigger,
            "cells": cells, "header_height": header, "cell_size": list(rows[0][0].size),
            "base": ad.base.pretrained_model_name_or_path, "method": ad.kind}


def _open_image(path, mode: str, what: str) -> Image.Image:
    if isinstance(path, Image.Image):
        return path.convert(mode)
    try:
        with Image.open(Path(path).expanduser()) as im:
            return ImageOps.exif_transpose(im).convert(mode)
    except (OSError, ValueError) as e:
        raise GenerationError(f"{what} {path} cannot be read as an image ({e})") from None


def _image_to_image(task: str, base, adaptor, prompt: str, image, mask, *, trigger, use_trigger, negative_prompt,
                    seed, steps, guidance, strength, lora_scale, out, pipe_cache, vae, dtype, clip_skip=None) -> dict:
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

    _check("strength", strength, 0.01, 1.0)
    _check("seed", seed, 0, 2**63 - 1)
    _check("lora_scale", lora_scale, -10.0, 10.0)
    source = _open_image(image, "RGB", "image")
    size = source.size
    mask_img = None if mask is None else _open_image(mask, "L", "mask").resize(size, Image.NEAREST)
    ad = resolve_adaptor(adaptor, base, trigger, vae)
    skip = _clip_skip(clip_skip, ad)
    cache = pipe_cache or PipeCache()
    torch_dtype = resolve_dtype(dtype, cache.device)
    # the model works on multiples of 8; the result is brought back to the input's own size
    w, h = max(64, size[0] // 8 * 8), max(64, size[1] // 8 * 8)
    settings = {**_sampling(negative_prompt, steps, guidance), "strength": float(strength),
                "image": source.resize((w, h), Image.LANCZOS)}
    full_prompt = with_trigger(prompt, ad.trigger) if use_trigger else prompt
    with adaptor_pipeline(cache, ad, torch_dtype, lora_scale) as pipe:
        if task == "inpaint":
            settings.update(mask_image=mask_img.resize((w, h), Image.NEAREST), width=w, height=h)
            task_pipe = AutoPipelineForInpainting.from_pipe(pipe)  # shares the loaded modules, no reload
        else:
            task_pipe = AutoPipelineForImage2Image.from_pipe(pipe)
        task_pipe.set_progress_bar_config(disable=True)
        result = _generate(task_pipe, full_prompt, seed, settings, torch_dtype, clip_skip=skip).resize(size,
                                                                                                        Image.LANCZOS)
    if mask_img is not None:  # pixels outside the mask stay exactly as uploaded
        result = Image.composite(result, source, mask_img)
    params = {"task": task, "base": ad.base.pretrained_model_name_or_path, "adaptor": str(adaptor),
              "prompt": full_prompt, "seed": seed, "strength": strength, "lora_scale": lora_scale, "clip_skip": skip,
              **{k: v for k, v in settings.items() if k not in ("image", "mask_image")}}
    save_png(result, Path(out), params)
    return {"image": str(out), "prompt": full_prompt, "trigger": ad.trigger, "size": list(size)}


def img2img(base: str | None, adaptor: str | Path, prompt: str, image, *, trigger: str | None = None,
            use_trigger: bool = True, negative_prompt: str = "", seed: int = 0, steps: int = 20,
            guidance: float = 7.5, strength: float = 0.75, lora_scale: float = 1.0, out: Path,
            pipe_cache: PipeCache | None = None, vae: str | None = None, dtype: str = "auto",
            clip_skip: int | None = None) -> dict:
    """The image redrawn with the adaptor (trigger word in front of the prompt unless use_trigger=False)."""
    return _image_to_image("img2img", base, adaptor, prompt, image, None, trigger=trigger, use_trigger=use_trigger,
                           negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance,
                           strength=strength, lora_scale=lora_scale, out=out, pipe_cache=pipe_cache, vae=vae,
                           dtype=dtype, clip_skip=clip_skip)


def inpaint(base: str | None, adaptor: str | Path, prompt: str, image, mask, *, trigger: str | None = None,
            use_trigger: bool = True, negative_prompt: str = "", seed: int = 0, steps: int = 20,
            guidance: float = 7.5, strength: float = 1.0, lora_scale: float = 1.0, out: Path,
            pipe_cache: PipeCache | None = None, vae: str | None = None, dtype: str = "auto",
            clip_skip: int | None = None) -> dict:
    """The white part of the mask repainted with the adaptor; the rest of the image kept as it was."""
    return _image_to_image("inpaint", base, adaptor, prompt, image, mask, trigger=trigger, use_trigger=use_trigger,
                           negative_prompt=negative_prompt, seed=seed, steps=steps, guidance=guidance,
                           strength=strength, lora_scale=lora_scale, out=out, pipe_cache=pipe_cache, vae=vae,
                           dtype=dtype, clip_skip=clip_skip)


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine.generate",
                                description="Generate images with an adaptor: a comparison grid, img2img, inpaint.")
    p.add_argument("--serve", action="store_true", help="serve JSON requests on stdin (one a line; for the studio)")
    sub = p.add_subparsers(dest="command")
    for name, text in (("compare", "grid: base | adaptor | adaptor + trigger word, a row per prompt"),
                       ("img2img", "redraw --image with the adaptor"),
                       ("inpaint", "repaint the white part of --mask in --image with the adaptor")):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--adaptor", required=True, help="a run folder or a LoRA .safetensors file")
        s.add_argument("--base", help="base model (default: the run's); needed for a bare LoRA file")
        s.add_argument("--vae", help="a separate VAE for the base model")
        if name == "compare":
            s.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for more rows)")
        else:
            s.add_argument("--prompt", default="", help="the prompt")
        s.add_argument("--negative-prompt", default="")
        s.add_argument("--trigger", help="trigger word (default: the run's, or the file's modelspec.trigger_phrase)")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--steps", type=int, default=20)
        s.add_argument("--guidance", type=float, default=7.5)
        s.add_argument("--lora-scale", type=float, default=1.0)
        s.add_argument("--clip-skip", type=int, help="text-encoder layer from the end, as kohya counts (default: "
                                                     "the run's clip_skip, else 1)")
        s.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
        s.add_argument("--out", required=True, type=Path, help="the PNG to write")
        if name == "compare":
            s.add_argument("--width", type=int)
            s.add_argument("--height", type=int)
        else:
            s.add_argument("--image", required=True, type=Path)
            s.add_argument("--strength", type=float, default=0.75 if name == "img2img" else 1.0)
            s.add_argument("--no-trigger", action="store_true", help="do not put the trigger word in front")
        if name == "inpaint":
            s.add_argument("--mask", required=True, type=Path, help="white = repaint, black = keep")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.serve:
        from engine.gen_worker import serve
        return serve()
    if not args.command:
        parser.print_usage(sys.stderr)
        print("error: give a command (compare, img2img, inpaint) or --serve", file=sys.stderr)
        return 2
    from engine.train import _quiet_libraries
    _quiet_libraries()
    common = dict(trigger=args.trigger, negative_prompt=args.negative_prompt, seed=args.seed, steps=args.steps,
                  guidance=args.guidance, lora_scale=args.lora_scale, out=args.out, vae=args.vae, dtype=args.dtype,
                  clip_skip=args.clip_skip)
    try:
        if args.command == "compare":
            result = compare_grid(args.base, args.adaptor, args.prompt, width=args.width, height=args.height, **common)
            print(result["grid"])
        else:
            extra = dict(strength=args.strength, use_trigger=not args.no_trigger, **common)
            result = (img2img(args.base, args.adaptor, args.prompt, args.image, **extra) if args.command == "img2img"
                      else inpaint(args.base, args.adaptor, args.prompt, args.image, args.mask, **extra))
            print(result["image"])
    except (GenerationError, ModelError, ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
