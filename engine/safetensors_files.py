"""Opening a .safetensors file a user gave (a base model, a VAE, a LoRA, a checkpoint to resume): a file that is
not one, most often a pickle checkpoint renamed .safetensors, gets a message saying so instead of a traceback."""
from __future__ import annotations

from pathlib import Path


class NotSafetensors(ValueError):
    """The message names the file and what it is instead."""


def read_header(path: str | Path, if_pickle: str = "convert it to safetensors") -> tuple[list[str], dict[str, str]]:
    """(tensor names, metadata) of a safetensors file; NotSafetensors if it is not a readable one (`if_pickle`: what
    to do when it is a pickle checkpoint)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return list(fh.keys()), fh.metadata() or {}
    except Exception as e:  # safetensors raises its own error type (not an OSError) for a bad header
        raise NotSafetensors(describe(Path(path), e, if_pickle)) from None


def describe(path: Path, err: Exception, if_pickle: str) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as e:
        return f"{path} cannot be read: {e.strerror}"
    # torch.save writes a zip archive (PK..), older PyTorch a bare pickle (protocol byte 0x80)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return f"{path} is a PyTorch pickle checkpoint (torch.save) with a .safetensors name; {if_pickle}"
    return (f"{path} is not a readable safetensors file ({str(err).splitlines()[0][:200]}); it may be cut short "
            "(an unfinished download or copy) or another format")


PICKLE_REFUSED = "convert it to safetensors (pickle files can run code and are not read)"


def read_lora_header(path: Path) -> tuple[list[str], dict[str, str]]:
    """read_header for a LoRA file the user gave: only .safetensors is read at all."""
    if path.suffix.lower() != ".safetensors":
        raise NotSafetensors(f"{path}: LoRA files must be .safetensors (pickle files such as .ckpt, .pt and .bin "
                             "can run code when loaded and are not read)")
    return read_header(path, PICKLE_REFUSED)
