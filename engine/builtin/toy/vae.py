"""The toy world's VAE: a small AutoencoderKL (4x downsampling: 64px images, 16x16x4 latents) trained on
freshly drawn scenes of every shape and fill, so adaptors for the held-out concepts encode as well as the
world itself does."""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from engine.builtin.toy import world

FOREGROUND_WEIGHT = 4.0
KL_WEIGHT = 1e-6  # as in the SD VAE: just enough to keep the latents a tidy, sampleable distribution


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=1,
        sample_size=world.SIZE, mid_block_add_attention=False, scaling_factor=1.0,
    )


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 images -> float tensor in [-1, 1], NCHW (the pipelines' convention)."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def batch_of(rng: np.random.Generator, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] and the shapes' coverage masks (N x 1 x H x W)."""
    scenes = [world.random_scene(rng, shapes=world.SHAPES, fills=world.FILLS) for _ in range(n)]
    masks = [world.coverage(s) for s in scenes]
    images = to_tensor([world.render(s, m) for s, m in zip(scenes, masks)])
    return images, torch.from_numpy(np.stack(masks))[:, None]


def train_vae(steps: int = 1500, batch_size: int = 16, lr: float = 2e-3, seed: int = 0, log=print):
    """Train from scratch; the returned VAE's scaling_factor makes scaled latents about unit variance."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    vae = make_vae()
    with torch.no_grad():  # start nearly deterministic (std 0.05): sampling noise at init drowns the signal
        vae.quant_conv.bias[vae.config.latent_channels:] = -6.0
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    started = time.time()
    for step in range(1, steps + 1):
        x, mask = batch_of(rng, batch_size)
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample()).sample
        # The background fills most pixels; weigh the shape up so its colour is kept as well as its outline.
        weight = 1.0 + FOREGROUND_WEIGHT * mask
        err = (rec - x).abs()
        loss = ((err + err**2) * weight).mean() / weight.mean() + KL_WEIGHT * posterior.kl().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps:
            log(f"vae step {step}/{steps} loss {loss.item():.4f} ({time.time() - started:.0f} s)")
    vae.eval()
    with torch.no_grad():
        x, mask = batch_of(np.random.default_rng(seed + 1), 256)
        latents = vae.encode(x).latent_dist.mean
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
        err = (vae.decode(latents).sample - x).abs().mean(dim=1, keepdim=True) * 127.5
        overall = err.mean().item()
        on_shapes = ((err * mask).sum() / mask.sum()).item()
    log(f"vae: mean abs reconstruction error {overall:.2f}/255 overall, {on_shapes:.2f}/255 on the shapes; "
        f"scaling_factor {vae.config.scaling_factor:.4f}")
    return vae, {"vae_reconstruction_error": round(overall, 3), "vae_reconstruction_error_on_shapes":
                 round(on_shapes, 3), "vae_seconds": round(time.time() - started, 1)}
