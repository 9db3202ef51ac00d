"""The validation loss users steer by (kohya's validation_split, OneTrainer's validation concept): the training
objective on held-out images at fixed timesteps with fixed noise, so it is deterministic and comparable
across steps and runs. It falls while the model learns and rises when it starts to overfit.

The held-out images: validation_data_dir, or a validation_split fraction of the training images chosen by
validation_seed (the same images whatever the run's seed). DreamBooth's class images always stay in training.
"""
from __future__ import annotations

import dataclasses
import hashlib

import torch

from engine.data import DataError, TrainDataset, build_caption, collate, discover_items

TIMESTEP_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)  # of the training schedule: the same K points every time


def _deterministic(cfg):
    """No augmentation, no dropout, no shuffled tags: the same examples every evaluation."""
    return cfg.replace(random_flip=False, center_crop=True, shuffle_caption=False, caption_dropout_rate=0.0,
                       color_jitter_brightness=0.0, color_jitter_contrast=0.0, color_jitter_saturation=0.0,
                       color_jitter_hue=0.0, noise_offset=0.0, repeats=1)


def split(items: list, cfg, warn) -> tuple[list, list]:
    """(training items, held-out items)."""
    from engine.methods.dreambooth import CLASS_CONCEPT

    if cfg.validation_data_dir:
        held = discover_items(cfg.replace(train_data_dir=cfg.validation_data_dir, dataset_name=None, repeats=1,
                                          max_train_samples=None), warn)
    elif cfg.validation_split:
        own = [it for it in items if it.concept != CLASS_CONCEPT]
        n = max(1, round(len(own) * cfg.validation_split))
        if n >= len(own):
            raise DataError(f"validation_split = {cfg.validation_split:g} would hold out all {len(own)} training "
                            "images: lower it, add images, or give a validation_data_dir")
        rank = sorted(own, key=lambda it: hashlib.sha256(f"{cfg.validation_seed}|{it.content_id or it.key}"
                                                          .encode()).hexdigest())
        chosen = {id(it) for it in rank[:n]}
        held = [it for it in own if id(it) in chosen]
        items = [it for it in items if id(it) not in chosen]
    else:
        return items, []
    if cfg.method == "dreambooth":  # trained with the instance prompt, whatever the files say
        held = [dataclasses.replace(it, caption=cfg.instance_prompt) for it in held]
    return items, [dataclasses.replace(it, repeats=1) for it in held]


class ValidationLoss:
    def __init__(self, items: list, cfg, comps, latent_cache=None, encode_latents=None):
        self.cfg = _deterministic(cfg)
        self.comps = comps
        if latent_cache is not None:
            latent_cache.prepare(items, self.cfg, encode_latents, batch_size=max(1, cfg.train_batch_size))
            self.dataset = latent_cache.dataset(items, self.cfg)
        else:
            self.dataset = TrainDataset(items, self.cfg)
        steps = comps.noise_scheduler.config.num_train_timesteps
        self.timesteps = torch.tensor([min(steps - 1, int(f * steps)) for f in TIMESTEP_FRACTIONS])

    def __len__(self) -> int:
        return len(self.dataset)

    def captions(self) -> list[str]:
        """What the text-encoder cache must hold for these images."""
        return [build_caption(it.caption, self.cfg.trigger_word) for it in self.dataset.items]

    @torch.no_grad()
    def __call__(self, loss_fn, unet, encode_text, modules, device, weight_dtype, prediction_type,
                 alphas_cumprod) -> float:
        """Mean over held-out images x fixed timesteps; image j's noise from (validation_seed, j) alone."""
        was_training = [m.training for m in modules]
        for m in modules:
            m.eval()  # no LoRA dropout
        try:
            total = 0.0
            for j in range(len(self.dataset)):
                batch = collate([self.dataset[j]] * len(self.timesteps))
                batch["timesteps"] = self.timesteps.to(device)
                gen = torch.Generator(device=device).manual_seed(self.cfg.validation_seed * 1_000_003 + j)
                loss = loss_fn(batch, self.comps, unet, encode_text, self.cfg, device, weight_dtype, prediction_type,
                               alphas_cumprod, gen)
                total += float(loss[0] if isinstance(loss, tuple) else loss)
            return total / max(1, len(self.dataset))
        finally:
            for m, t in zip(modules, was_training):
                m.train(t)
