"""Caches that spare the hot loop repeated work: VAE latents (engine.data.LatentCache) and text-encoder outputs."""
from __future__ import annotations

from pathlib import Path

import torch


def latent_encoder(comps, device):
    vae = comps.vae

    @torch.no_grad()
    def encode(px: torch.Tensor) -> torch.Tensor:
        lat = vae.encode(px.to(device, vae.dtype)).latent_dist.mode()
        return ((lat - comps.vae_shift_factor) * comps.vae_scaling_factor).float().cpu()

    return encode


def vae_key(cfg, source) -> str:
    """Identifies the VAE whose latents are cached (a different VAE must not reuse them)."""
    vae = cfg.pretrained_vae_model_name_or_path
    loc = vae or source.location
    p = Path(loc)
    stamp = ""
    for cand in (p / "vae" / "diffusion_pytorch_model.safetensors", p / "diffusion_pytorch_model.safetensors", p):
        if cand.is_file():
            st = cand.stat()
            stamp = f"{st.st_size}-{int(st.st_mtime)}"
            break
    return f"{loc}|{cfg.revision}|{cfg.variant}|{stamp}"
