"""Full training: every UNet weight (and the text encoder's, with train_text_encoder) from a base, which
may be a randomly initialised model (training from scratch, as builtin:toy is built). The result is a
complete diffusers pipeline folder that loads with `<Pipeline>.from_pretrained`."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from engine.export import finish_card
from engine.methods import lora
from engine.methods.lora import trainable_params

# which modules a run trains is the same question for both methods
trained_modules = lora.trained_modules


def prepare(comps, cfg) -> list[dict]:
    comps.vae.requires_grad_(False)
    groups = [{"params": _trainable(comps.unet), "lr": cfg.learning_rate, "name": "unet"}]
    te_lr = cfg.text_encoder_lr if cfg.text_encoder_lr is not None else cfg.learning_rate
    for name, te in zip(comps.family.text_encoder_names, comps.text_encoders):
        te.requires_grad_(bool(cfg.train_text_encoder))
        if cfg.train_text_encoder:
            groups.append({"params": _trainable(te), "lr": te_lr, "name": name})
    return groups


def _trainable(module) -> list[torch.nn.Parameter]:
    module.requires_grad_(True)
    return trainable_params(module)


def state_dicts(modules: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
            for name, m in modules.items()}


def load_state(modules: dict[str, torch.nn.Module], state: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, module in modules.items():
        module.load_state_dict(state[name])


def output_path(run_dir: Path, cfg) -> Path:
    return run_dir / "diffusers" / "model_index.json"


def load_into_pipeline(pipe, run_dir: Path, cfg, scale: float = 1.0) -> None:
    """The trained UNet (and text encoders, if trained) in place of a loaded base pipeline's; `scale` blends
    the weights: base + scale x (trained - base)."""
    folder = Path(run_dir) / "diffusers"
    names = ["unet"] + [n for n in ("text_encoder", "text_encoder_2")
                        if cfg.train_text_encoder and getattr(pipe, n, None) is not None]
    for name in names:
        base = getattr(pipe, name)
        trained = type(base).from_pretrained(folder, subfolder=name).to(base.device, base.dtype)
        if scale != 1.0:
            old = base.state_dict()
            trained.load_state_dict({k: old[k] + scale * (v - old[k]) if v.is_floating_point() else v
                                     for k, v in trained.state_dict().items()})
        setattr(pipe, name, trained)


def write_outputs(folder: Path, cfg, comps, modules: dict, stats: dict) -> dict[str, str]:
    """The whole pipeline (trained parts in fp32, the rest as loaded), saved to a temp folder and renamed
    into place, keeping the base's sampling scheduler."""
    fam = comps.family
    tes = [modules.get(n, te) for n, te in zip(fam.text_encoder_names, comps.text_encoders)]
    pipe = fam.make_pipeline(comps, unet=modules["unet"], text_encoders=tes)
    pipe.scheduler = _sampling_scheduler(comps) or pipe.scheduler
    final = Path(folder) / "diffusers"
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".diffusers-", dir=final.parent))
    try:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"diffusers": str(final)}


def _sampling_scheduler(comps):
    """The base pipeline's own scheduler class with the training noise schedule, when it can be read."""
    import diffusers

    try:
        index = diffusers.DiffusionPipeline.load_config(comps.source.location)
        cls = getattr(diffusers, index["scheduler"][1])
        return cls.from_config(comps.noise_scheduler.config)
    except Exception:  # a single file, or an index we cannot read: the family's default sampler
        return None


def model_card(cfg, comps, stats: dict, outputs: dict[str, str], samples: list[str]) -> str:
    fam = comps.family
    lines = [
        f"# {cfg.adaptor_name}",
        "",
        f"A fully trained {fam.label} model from **{comps.source.name}**, trained with Adaptor Studio.",
        "",
        f"- Steps: {stats.get('step')} ({stats.get('epoch')} epochs) on {stats.get('num_train_images')} images",
        f"- Learning rate {cfg.learning_rate:g}, {cfg.lr_scheduler} schedule, optimizer {cfg.optimizer}, "
        f"resolution {cfg.resolution}, batch {cfg.train_batch_size} x {cfg.gradient_accumulation_steps}, "
        f"seed {cfg.seed}",
        f"- Text encoder trained: {'yes' if cfg.train_text_encoder else 'no'}",
    ]
    return finish_card(lines, [
        f"pipe = {fam.pipeline_class.__name__}.from_pretrained(\"{outputs.get('diffusers', 'diffusers')}\")",
        f"image = pipe(\"{cfg.validation_prompt or 'your prompt'}\").images[0]",
    ], samples)
