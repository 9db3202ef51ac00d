"""Optimizers and learning-rate schedules, by the names the diffusers scripts and kohya use."""
from __future__ import annotations

import torch

from engine.config import ConfigError


def build_optimizer(cfg, groups: list[dict], on_cuda: bool) -> torch.optim.Optimizer:
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    # param groups may carry a "name" for logging; optimizers ignore unknown keys in groups
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=betas, weight_decay=cfg.adam_weight_decay,
                                 eps=cfg.adam_epsilon, fused=cfg.fused_adamw or None)
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
        # as the diffusers scripts call it; Prodigy finds the step size itself, so learning_rate is ~1.0
        return Prodigy(groups, lr=cfg.learning_rate, betas=betas, beta3=cfg.prodigy_beta3,
                       weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon, decouple=cfg.prodigy_decouple,
                       use_bias_correction=cfg.prodigy_use_bias_correction,
                       safeguard_warmup=cfg.prodigy_safeguard_warmup, d_coef=cfg.prodigy_d_coef)
    if cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor
        # our learning rate and schedule, not Adafactor's own relative step size
        return Adafactor(groups, lr=cfg.learning_rate, relative_step=False, scale_parameter=False,
                         warmup_init=False, weight_decay=cfg.adam_weight_decay)
    if cfg.optimizer == "lion":
        return Lion(groups, lr=cfg.learning_rate, betas=betas, weight_decay=cfg.adam_weight_decay)
    raise ConfigError(f"optimizer = {cfg.optimizer!r} is not known")


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the sign of an interpolated
    momentum as the update, decoupled weight decay. Use a learning rate 3-10x smaller than AdamW's."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ConfigError(f"Lion betas must be in [0, 1): got {tuple(betas)}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["step"] = torch.zeros((), dtype=torch.float32)
                exp_avg = state["exp_avg"]
                state["step"] += 1
                p.mul_(1 - group["lr"] * group["weight_decay"])
                update = exp_avg.mul(beta1).add_(p.grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-group["lr"])
                exp_avg.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


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
