"""Caches that spare the hot loop repeated work: VAE latents (engine.data.LatentCache) and text-encoder outputs."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch


def latent_encoder(comps, device):
    vae = comps.vae

    @torch.no_grad()
    def encode(px: torch.Tensor) -> torch.Tensor:
        return comps.family.encode_latents(comps, px.to(device, vae.dtype)).float().cpu()

    return encode


def _stamp(paths) -> str:
    """Size and mtime of the first file that exists: a rebuilt or replaced model gets a new key."""
    for cand in paths:
        if cand.is_file():
            st = cand.stat()
            return f"{st.st_size}-{int(st.st_mtime)}"
    return ""


def vae_key(cfg, source, dtype) -> str:
    """Identifies the VAE whose latents are cached (a different VAE, or the same one run in another precision,
    must not reuse them: SDXL's VAE runs in bf16 when that is safe)."""
    loc = cfg.pretrained_vae_model_name_or_path or source.location
    p = Path(loc)
    stamp = _stamp([p / "vae" / "diffusion_pytorch_model.safetensors", p / "diffusion_pytorch_model.safetensors",
                    p])
    return f"{loc}|{cfg.revision}|{cfg.variant}|{stamp}|{dtype}"


def text_encoders_key(cfg, source, family, dtype) -> str:
    """Identifies the text encoders (and tokenizers) whose outputs are cached, and the precision they ran in
    (outputs of a bf16 run are not what a float32 run would compute)."""
    p = Path(source.location)
    stamps = [_stamp([p / name / "model.safetensors", p]) for name in family.text_encoder_names]
    skip = f"|clip_skip{cfg.clip_skip}" if cfg.clip_skip > 1 else ""  # other layers, other outputs
    return f"{source.location}|{cfg.revision}|{cfg.variant}|{family.name}|{'|'.join(stamps)}|{dtype}{skip}"


class TextEncoderCache:
    """Text-encoder outputs per caption, computed once (the encoders are frozen) and kept on disk.

    One safetensors file per (caption, model) under root; the whole set is also held in memory, since a
    dataset has few distinct captions. Lookups return exactly what `family.encode_prompt` would.
    """

    def __init__(self, root: Path, model_key: str, family, tokenizers, text_encoders, device, clip_skip: int = 1):
        self.root, self.model_key, self.clip_skip = Path(root), model_key, clip_skip
        self.family, self.tokenizers, self.text_encoders, self.device = family, tokenizers, text_encoders, device
        self.memory: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def _path(self, caption: str) -> Path:
        digest = hashlib.sha256(f"text-v1|{self.model_key}|{caption}".encode()).hexdigest()
        return self.root / f"{digest}.safetensors"

    @torch.no_grad()
    def prepare(self, captions, batch_size: int = 16) -> int:
        """Load what is on disk, encode the rest; returns how many captions were encoded now."""
        from safetensors.torch import load_file, save

        from engine.config import atomic_write_bytes

        todo = []
        for caption in dict.fromkeys(captions):
            path = self._path(caption)
            if path.is_file():
                stored = load_file(str(path))
                self.memory[caption] = (stored["hidden"], stored.get("pooled"))
            else:
                todo.append(caption)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            hidden, pooled = self.family.encode_prompt(self.tokenizers, self.text_encoders, chunk, self.device,
                                                       self.clip_skip)
            for i, caption in enumerate(chunk):
                entry = {"hidden": hidden[i].float().cpu().contiguous()}
                if pooled is not None:
                    entry["pooled"] = pooled[i].float().cpu().contiguous()
                atomic_write_bytes(self._path(caption), save(entry))
                self.memory[caption] = (entry["hidden"], entry.get("pooled"))
        return len(todo)

    def lookup(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden = torch.stack([self.memory[c][0] for c in captions]).to(device, non_blocking=True)
        pooled = None
        if self.memory[captions[0]][1] is not None:
            pooled = torch.stack([self.memory[c][1] for c in captions]).to(device, non_blocking=True)
        return hidden, pooled
