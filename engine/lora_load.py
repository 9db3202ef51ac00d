"""A LoRA file into a diffusers pipeline: diffusers' own `load_lora_weights`, then what it drops put back.

diffusers 0.42 hands a text encoder's DoRA magnitudes (`...q_proj.lora_magnitude_vector`) to transformers 5's
adapter loader, which expects `...lora_magnitude_vector.<adapter>.weight`: it reports them UNEXPECTED and
MISSING and the layers keep the magnitude PEFT gave them when they were made, so a DoRA with a trained text
encoder draws the wrong image. The UNet's magnitudes load. (A kohya file's `dora_scale` is dropped by
diffusers for every component, with its own warning: that file loads as a plain LoRA.)
"""
from __future__ import annotations

from pathlib import Path

import torch

TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
MAGNITUDE = ".lora_magnitude_vector"


def load_lora(pipe, path: str | Path, adapter_name: str) -> None:
    """`pipe.load_lora_weights(path, adapter_name=...)` with every text-encoder DoRA magnitude as trained."""
    pipe.load_lora_weights(str(path), adapter_name=adapter_name)
    state = pipe.lora_state_dict(str(path))  # the file as diffusers read it (kohya keys converted)
    if isinstance(state, tuple):  # (state, alphas[, metadata]) for the UNet pipelines; Flux's returns the dict
        state = state[0]
    restore_text_encoder_magnitudes(pipe, state, adapter_name)


@torch.no_grad()
def restore_text_encoder_magnitudes(pipe, state: dict[str, torch.Tensor], adapter_name: str) -> int:
    """Copy `{text_encoder}.<module>.lora_magnitude_vector` from a diffusers-format state dict into the
    pipeline's DoRA layers for `adapter_name`; returns how many were set."""
    done = 0
    for key, value in state.items():
        component, _, rest = key.partition(".")
        if component not in TEXT_ENCODERS or not rest.endswith(MAGNITUDE):
            continue
        encoder = getattr(pipe, component, None)
        layer = _layer(encoder, rest[: -len(MAGNITUDE)]) if encoder is not None else None
        magnitudes = getattr(layer, "lora_magnitude_vector", None)
        if magnitudes is None or adapter_name not in magnitudes:
            raise ValueError(f"{key}: the pipeline has no DoRA layer for it (adapter {adapter_name!r})")
        weight = magnitudes[adapter_name].weight
        weight.copy_(value.reshape(weight.shape))
        done += 1
    return done


def _layer(encoder: torch.nn.Module, path: str):
    """The module at `path`, written with or without `text_model.` (transformers 5's CLIPTextModel has no such
    wrapper; CLIPTextModelWithProjection has)."""
    for candidate in (path, path.removeprefix("text_model.")):
        try:
            return encoder.get_submodule(candidate)
        except AttributeError:
            continue
    return None
