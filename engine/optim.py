"""Optimizers and learning-rate schedules, by the names the diffusers scripts and kohya use."""
from __future__ import annotations

import torch

from engine.config import ConfigError


def build_optimizer(cfg, groups: list[dict], on_cuda: bool) -> torch.optim.Optimizer:
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    # param groups may carry a "name" for logging; optimizers ignore unknown keys in groups
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=betas, weight_decay=cfg.adam_weight_decay,
                                 eps=cfg.adam_epsilon, fused=on_cuda or None)
    if cfg.optimizer == "adamw8bit":
        if not on_cuda:
            raise ConfigError("optimizer = \"adamw8bit\" needs a CUDA GPU (bitsandbytes); use \"adamw\" here")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("optimizer = \"adamw8bit\" needs bitsandbytes: pip install bitsandbytes "
                              "(or pip install -e '.[gpu]')") from None
        return bnb.optim.AdamW8bit(groups, lr=cfg.learning_rate, betas=betas,
                                   weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    if cfg.optimizer == "prodigy":
        from prodigyopt import Prodigy
        return Prodigy(groups, lr=cfg.learning_rate, betas=betas, weight_decay=cfg.adam_weight_decay,
                       eps=cfg.adam_epsilon)
    raise ConfigError(f"optimizer = {cfg.optimizer!r} is not known")


def build_lr_scheduler(cfg, optimizer, total_steps: int, num_processes: int):
    from diffusers.optimization import get_scheduler

    # accelerate steps a prepared scheduler once per process each step, so count in process-steps
    return get_scheduler(cfg.lr_scheduler, optimizer=optimizer,
                         num_warmup_steps=cfg.lr_warmup_steps * num_processes,
                         num_training_steps=total_steps * num_processes,
                         num_cycles=cfg.lr_num_cycles, power=cfg.lr_power)


def optimizer_step_count(optimizer) -> int | None:
    """How many updates the optimizer has applied (its own counter, restored with its state)."""
    opt = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
    for state in opt.state.values():
        step = state.get("step")
        if step is not None:
            return int(step.item() if torch.is_tensor(step) else step)
    for group in opt.param_groups:  # prodigy counts per group
        if "k" in group:
            return int(group["k"])
    return 0
