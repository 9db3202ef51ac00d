"""The judge: a small classifier that reads shape, colour, background and fill from a toy-world image.

Trained on the generator's ground truth (every shape and fill, the held-out concepts included), with the
blur, noise and VAE round trips that generated images carry, so it can score what a model draws.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.builtin.toy import world
from engine.builtin.toy.vae import to_tensor

HEADS: dict[str, tuple[str, ...]] = {
    "shape": world.SHAPES, "colour": tuple(world.COLOURS), "background": tuple(world.BACKGROUNDS),
    "fill": world.FILLS,
}


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class Judge(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(_block(3, 24), _block(24, 48), _block(48, 96), _block(96, 96))  # 64 -> 4
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(96 * 4 * 4, 192), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({k: nn.Linear(192, len(v)) for k, v in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: images in [-1, 1], N x 3 x 64 x 64 -> logits per attribute."""
        h = self.hidden(self.features(x))
        return {k: head(h) for k, head in self.heads.items()}


def _targets(scenes: list[world.Scene]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([v.index(getattr(s, k)) for s in scenes]) for k, v in HEADS.items()}


def _degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, noise and colour shifts of the kind a diffusion model's samples show."""
    n = x.shape[0]
    blur = torch.rand(n, 1, 1, 1, generator=gen)
    x = x * (1 - blur) + F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False) * blur
    x = x + torch.randn(x.shape, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen) * 0.08
    x = x + (torch.rand(n, 3, 1, 1, generator=gen) - 0.5) * 0.1
    return x.clamp(-1, 1)


def _round_trip(vae, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return vae.decode(vae.encode(x).latent_dist.sample()).sample.clamp(-1, 1)


def train_judge(steps: int = 700, batch_size: int = 64, seed: int = 0, vae=None, log=print) -> Judge:
    """Train on fresh scenes each step; with a VAE, a quarter of each batch goes through it first."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    started = time.time()
    for step in range(1, steps + 1):
        scenes = [world.random_scene(rng, shapes=world.SHAPES, fills=world.FILLS) for _ in range(batch_size)]
        x = to_tensor([world.render(s) for s in scenes])
        if vae is not None:
            k = batch_size // 4
            x[:k] = _round_trip(vae, x[:k])
        x = _degrade(x, gen)
        logits = judge(x)
        y = _targets(scenes)
        loss = sum(F.cross_entropy(logits[k], y[k]) for k in HEADS)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps:
            log(f"judge step {step}/{steps} loss {loss.item():.4f} ({time.time() - started:.0f} s)")
    return judge.eval()


@torch.no_grad()
def predict(judge: Judge, images) -> list[dict[str, str]]:
    """Attributes read from images (PIL images or uint8 HxWx3 arrays of any size; resized to 64px)."""
    arrays = []
    for im in images:
        if not isinstance(im, np.ndarray):
            im = np.asarray(im.convert("RGB").resize((world.SIZE, world.SIZE)))
        arrays.append(im)
    out: list[dict[str, str]] = [{} for _ in arrays]
    for start in range(0, len(arrays), 256):
        logits = judge.eval()(to_tensor(arrays[start:start + 256]))
        for k, names in HEADS.items():
            for i, idx in enumerate(logits[k].argmax(1).tolist()):
                out[start + i][k] = names[idx]
    return out


def accuracy(judge: Judge, n: int = 2000, seed: int = 12345, vae=None) -> dict[str, float]:
    """Per-attribute accuracy on held-out scenes (a seed training never used), optionally VAE round-tripped."""
    scenes = world.scenes(n, seed, shapes=world.SHAPES, fills=world.FILLS)
    images = [world.render(s) for s in scenes]
    if vae is not None:
        x = torch.cat([_round_trip(vae, to_tensor(images[i:i + 128])) for i in range(0, n, 128)])
        images = [((t.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy() for t in x]
    got = predict(judge, images)
    return {k: sum(g[k] == getattr(s, k) for g, s in zip(got, scenes)) / n for k in HEADS}


def save_judge(judge: Judge, path: Path) -> None:

    from engine.config import atomic_write_bytes
    from safetensors.torch import save as to_bytes
    atomic_write_bytes(Path(path), to_bytes({k: v.contiguous() for k, v in judge.state_dict().items()}))


def load_judge(path: Path) -> Judge:
    from safetensors.torch import load_file

    judge = Judge()
    judge.load_state_dict(load_file(str(path)))
    return judge.eval()
