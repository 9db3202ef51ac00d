"""What every model family shares: where the model comes from, loading its parts, the common interface."""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.builtin import is_builtin, resolve_builtin

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")


class ModelError(ValueError):
    """A model that cannot be used as given; the message names it and says what to do."""


@dataclass
class ModelSource:
    kind: str  # "dir" (local diffusers folder, built-ins included), "single_file" or "hub"
    location: str  # local path or hub id
    name: str  # what the user wrote (kept for ss_sd_model_name and the model card)


def resolve_source(name: str, allow_pickle: bool = False) -> ModelSource:
    if is_builtin(name):
        try:
            return ModelSource("dir", str(resolve_builtin(name)), name)
        except ValueError as e:
            raise ModelError(str(e)) from None
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            raise ModelError(f"{p} is a folder but not a diffusers pipeline (no model_index.json); give a "
                             "diffusers folder, a single-file .safetensors checkpoint, a hub id or a builtin: name")
        return ModelSource("dir", str(p), name)
    if p.is_file():
        if p.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
            raise ModelError(f"{p} is a pickle checkpoint, which can run code when loaded; convert it to "
                             ".safetensors, or set allow_pickle = true if you trust the file")
        if p.suffix.lower() not in (".safetensors",) + PICKLE_SUFFIXES:
            raise ModelError(f"{p}: single-file checkpoints must be .safetensors (or a pickle with allow_pickle)")
        return ModelSource("single_file", str(p), name)
    looks_local = name.startswith((".", "/", "~")) or name.endswith((".safetensors",) + PICKLE_SUFFIXES) \
        or name.count("/") != 1
    if looks_local:
        raise ModelError(f"model {name!r} not found: no such file or folder (and it is not a hub id of the "
                         "form owner/name)")
    return ModelSource("hub", name, name)


def read_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def hub_error(source: ModelSource, err: Exception) -> ModelError:
    return ModelError(f"could not load {source.name!r} from the Hugging Face Hub ({type(err).__name__}: "
                      f"{str(err).splitlines()[0][:200]}). Without network, download the model once and give "
                      "its local folder, or use a builtin: model")


def load_error(source: ModelSource, err: OSError) -> ModelError:
    """A model folder or hub id whose parts would not load, named as such."""
    if source.kind == "hub":
        return hub_error(source, err)
    return ModelError(f"could not load the model in {source.location}: {str(err).splitlines()[0][:300]}")


def single_file_error(source: ModelSource, err: Exception) -> ModelError:
    """What stopped diffusers loading a single-file checkpoint, named as it is: the Hub config it fetches, a pickle
    its torch.load(weights_only=True) refuses, or the error itself."""
    chain, e = [], err
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    first = f"could not load the single-file checkpoint {source.location}"
    if any(type(c).__module__.split(".")[0] in ("huggingface_hub", "requests", "httpx", "urllib3") for c in chain):
        return ModelError(f"{first}: {str(err).splitlines()[0][:200]}. diffusers needs the original model's config "
                          "(from the Hub or its cache); with no network, use a diffusers folder")
    refused = [c for c in chain if isinstance(c, pickle.UnpicklingError)]
    if refused:
        return ModelError(f"{first}: diffusers reads pickle checkpoints only with torch.load(weights_only=True), "
                          f"which refuses this one ({str(refused[-1]).splitlines()[0][:160]}); allow_pickle cannot "
                          "change that: convert the file to .safetensors with a tool you trust")
    return ModelError(f"{first}: {str(chain[-1]).splitlines()[0][:300]}")


@dataclass
class Components:
    """The loaded parts of a pipeline that training needs."""
    family: "Family"
    source: ModelSource
    tokenizers: list
    text_encoders: list
    vae: Any
    unet: Any
    noise_scheduler: Any
    sampling_scheduler_config: dict = field(default_factory=dict)

    @property
    def vae_scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)


class Family:
    """One model family. Subclasses say how to load, encode prompts and build the sampling pipeline."""

    name = "?"
    label = "?"
    objective = "noise"  # noise prediction (epsilon / v); the DiT families' is "flow"
    denoiser_name = "unet"  # the pipeline's name for the denoiser (Components.unet holds it either way)
    pipeline_class: Any = None
    text_encoder_names: tuple[str, ...] = ("text_encoder",)
    kohya_te_prefixes: dict[str, str] = {"text_encoder": "lora_te"}
    default_resolution = 512

    # ---- loading
    def load(self, source: ModelSource, cfg, weight_dtype: torch.dtype) -> Components:
        raise NotImplementedError

    # ---- training
    def encode_prompt(self, tokenizers, text_encoders, captions: list[str], device,
                      clip_skip: int = 1) -> tuple[torch.Tensor, Any]:
        """(encoder hidden states, pooled embedding or None) for a batch of captions; clip_skip as kohya counts
        (1 = the last layer)."""
        raise NotImplementedError

    def encode_latents(self, comps: Components, px: torch.Tensor, generator=None) -> torch.Tensor:
        """Pixels [B, 3, H, W] -> latents [B, C, h, w] normalised as the denoiser sees them: the posterior's mode,
        or a draw from it with `generator` (training without a latent cache)."""
        dist = comps.vae.encode(px).latent_dist
        latents = dist.mode() if generator is None else dist.sample(generator=generator)
        return (latents - comps.vae_shift_factor) * comps.vae_scaling_factor

    def added_cond(self, comps: Components, batch: dict, pooled, device, dtype) -> dict | None:
        return None

    def prediction_type(self, comps: Components) -> str:
        return comps.noise_scheduler.config.prediction_type

    def call_kwargs(self, pipe) -> dict:
        """Arguments every call of this family's pipeline adds (the DiTs: the T5 length training used)."""
        return {}

    # ---- metadata for kohya/modelspec
    def base_model_version(self, comps: Components) -> str:
        raise NotImplementedError

    def modelspec_architecture(self, comps: Components, kind: str = "lora") -> str:
        raise NotImplementedError

    def make_pipeline(self, comps: Components, unet=None, text_encoders=None):
        """A sampling pipeline sharing the (possibly LoRA-wrapped) modules in memory."""
        from diffusers import DPMSolverMultistepScheduler

        scheduler = DPMSolverMultistepScheduler.from_config(comps.noise_scheduler.config)
        tes = text_encoders or comps.text_encoders
        kwargs = {"vae": comps.vae, "unet": unet or comps.unet, "scheduler": scheduler}
        for name, te, tok in zip(self.text_encoder_names, tes, comps.tokenizers):
            kwargs[name] = te
            kwargs[name.replace("text_encoder", "tokenizer")] = tok
        return self._pipeline(kwargs)

    def _pipeline(self, kwargs):
        return self.pipeline_class(**kwargs)


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def load_vae(cfg, source: ModelSource, dtype: torch.dtype, cls=None):
    """The model's VAE (an AutoencoderKL unless the family names its class), or the override (a folder/hub id with
    config.json, a folder with vae/, or a file)."""
    from diffusers import AutoencoderKL

    cls = cls or AutoencoderKL
    override = cfg.pretrained_vae_model_name_or_path
    try:
        if override:
            p = Path(override).expanduser()
            if p.is_file():
                if p.suffix.lower() != ".safetensors" and not cfg.allow_pickle:
                    raise ModelError(f"VAE {p} is a pickle file; convert it to .safetensors or set allow_pickle")
                if p.suffix.lower() == ".safetensors":
                    safetensors_keys(p, "pretrained_vae_model_name_or_path")
                return cls.from_single_file(str(p), torch_dtype=dtype)
            sub = "vae" if (p / "vae" / "config.json").is_file() else None
            if not p.exists() and (override.startswith((".", "/", "~")) or override.count("/") != 1):
                raise ModelError(f"VAE {override!r} not found: no such file or folder")
            return cls.from_pretrained(override, subfolder=sub, torch_dtype=dtype)
        from engine.builtin.random_dit import is_random, random_model
        if is_random(source.location):
            return random_model(cls, source.location, "vae", dtype)
        return cls.from_pretrained(source.location, subfolder="vae", revision=cfg.revision,
                                 variant=cfg.variant, torch_dtype=dtype)
    except ModelError:
        raise
    except OSError as e:
        if override:
            raise ModelError(f"could not load the VAE {override!r}: {str(e).splitlines()[0][:200]}") from None
        raise


def safetensors_keys(path: Path, key: str) -> list[str]:
    """The tensor names of a model file the user gave under `key`; ModelError if it is not safetensors."""
    from engine.safetensors_files import NotSafetensors, read_header

    try:
        return read_header(path, "convert it to safetensors, or, if you trust the file, rename it .ckpt and set "
                                 "allow_pickle = true")[0]
    except NotSafetensors as e:
        raise ModelError(f"{key}: {e}") from None


def load_pretrained(cls, source: ModelSource, cfg, subfolder: str, dtype: torch.dtype | None = None, **extra):
    from engine.builtin.random_dit import is_random, random_model

    if is_random(source.location) and issubclass(cls, torch.nn.Module):
        return random_model(cls, source.location, subfolder, dtype)  # built on the GPU, not read from disk
    kwargs = {"subfolder": subfolder, "revision": cfg.revision, **extra}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    if cfg.variant and subfolder not in ("tokenizer", "tokenizer_2", "scheduler"):
        kwargs["variant"] = cfg.variant
    return cls.from_pretrained(source.location, **kwargs)
