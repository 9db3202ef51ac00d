"""The one interface every captioner offers the runner (engine/caption/run.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from PIL import Image

from .options import CaptionError


class Captioner(Protocol):
    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image (RGB PIL images, any size), in order."""

    def report(self) -> list[str]:
        """Lines to show when the run ends (WD14: tag frequency); [] when there is nothing to say."""

    def close(self) -> None:
        """Drop the model and free its memory (the runner calls this when done, cancelled or failed)."""


def pick_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def is_local_model(model_id: str) -> bool:
    """Whether --model names a folder here rather than a hub id ('owner/name' or 'name'): an existing path
    always does, and so does anything path-like (absolute, ./, ~, a backslash, two slashes, C:)."""
    return (Path(model_id).expanduser().exists() or model_id.startswith((".", "/", "~")) or "\\" in model_id
            or model_id.count("/") > 1 or (len(model_id) > 1 and model_id[1] == ":"))


def hub_source(model_id: str, local: str = "a local folder") -> str:
    """"cached" or "download" for a hub id; CaptionError at once when it is neither (offline, not cached),
    instead of minutes of network retries. `local`: what to give instead."""
    from engine.hub import HubUnavailable, availability
    try:
        return availability(model_id, local=local)
    except HubUnavailable as e:
        raise CaptionError(f"cannot load the captioner's model: {e}") from None


def model_source(model_id: str) -> str:
    """Where the model will come from: "folder" (a local path), "cached" or "download" (a hub id)."""
    return "folder" if is_local_model(model_id) else hub_source(model_id)
