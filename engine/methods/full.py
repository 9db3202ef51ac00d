"""Full training: every UNet weight (and the text encoder's, with train_text_encoder) from a base, which
may be a randomly initialised model (training from scratch, as builtin:toy is built). The result is a
complete diffusers pipeline folder that loads with `<Pipeline>.from_pretrained`, and the same weights as one
original-layout `{adaptor_name}.safetensors` for `from_single_file`, AUTOMATIC1111 and ComfyUI.

With use_ema, an exponential moving average of the UNet (diffusers' EMAModel) rides along on the UNet module
(attribute `EMA_ATTR`, not a submodule, so accelerate and state dicts ignore it); it is stepped after every
optimizer step, saved in checkpoints, and is what the outputs hold."""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from engine import atomic, single_file
from engine.export import canonical_keys, finish_card
from engine.methods import lora
from engine.methods.lora import trainable_params

# which modules a run trains is the same question for both methods
trained_modules = lora.trained_modules


def prepare(comps, cfg) -> list[dict]:
    comps.vae.requires_grad_(False)
    groups = [{"params": _trainable(comps.unet), "lr": cfg.learning_rate, "name": "unet"}]
    if cfg.use_ema:
        _attach_ema(comps.unet, cfg)
    te_lr = cfg.text_encoder_lr if cfg.text_encoder_lr is not None else cfg.learning_rate
    trainable = lora.lora_text_encoders(comps)  # the CLIPs: a DiT's T5 stays frozen
    for name, te in zip(comps.family.text_encoder_names, comps.text_encoders):
        te.requires_grad_(bool(cfg.train_text_encoder) and name in trainable)
        if cfg.train_text_encoder and name in trainable:
            groups.append({"params": _trainable(te), "lr": te_lr, "name": name})
    return groups


EMA_ATTR = "adaptor_studio_ema"
EMA_STATE = "ema_unet"


def _attach_ema(unet, cfg) -> None:
    from diffusers.training_utils import EMAModel

    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, foreach=True)
    ema.offload = bool(cfg.offload_ema)
    setattr(unet, EMA_ATTR, ema)


def ema_of(unet):
    return getattr(unet, EMA_ATTR, None)


def after_optimizer_step(modules: dict) -> None:
    """Called by the loop after each optimizer step: move the EMA towards the new UNet weights."""
    unet = modules["unet"]
    ema = ema_of(unet)
    if ema is None:
        return
    device = next(unet.parameters()).device
    if ema.shadow_params[0].device != device:
        ema.to(device=device, non_blocking=True)  # once, or every step with offload_ema (as diffusers does)
    ema.step(unet.parameters())
    if ema.offload and device.type != "cpu":
        ema.to(device="cpu", non_blocking=True)
        # a non-blocking copy to pageable host memory may still be in flight when a checkpoint reads the
        # shadow weights; wait for it here, once per step, rather than read half-copied tensors
        torch.cuda.synchronize(device)


def _trainable(module) -> list[torch.nn.Parameter]:
    module.requires_grad_(True)
    return trainable_params(module)


def state_dicts(modules: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    out = {name: {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
           for name, m in modules.items()}
    ema = ema_of(modules["unet"])
    if ema is not None:  # by parameter name, plus the step count its decay warm-up depends on
        names = [n for n, _ in modules["unet"].named_parameters()]
        out[EMA_STATE] = {n: p.detach().cpu().contiguous() for n, p in zip(names, ema.shadow_params)}
        out[EMA_STATE]["__optimization_step__"] = torch.tensor(ema.optimization_step)
    return out


def load_state(modules: dict[str, torch.nn.Module], state: dict[str, dict[str, torch.Tensor]]) -> None:
    for name, module in modules.items():
        module.load_state_dict(state[name])
    ema = ema_of(modules["unet"])
    if ema is not None:
        saved = state.get(EMA_STATE)
        if saved is None:
            raise ValueError("use_ema = true but the checkpoint holds no EMA weights (it was saved without "
                             "use_ema); resume without use_ema or start afresh")
        names = [n for n, _ in modules["unet"].named_parameters()]
        for shadow, n in zip(ema.shadow_params, names):
            shadow.data.copy_(saved[n].to(shadow.device))
        ema.optimization_step = int(saved["__optimization_step__"])


@contextmanager
def _ema_weights(unet):
    """The UNet holds the EMA weights inside the block (if it keeps an EMA), its own weights again after."""
    ema = ema_of(unet)
    if ema is None:
        yield
        return
    params = list(unet.parameters())
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def output_path(run_dir: Path, cfg) -> Path:
    return run_dir / "diffusers" / "model_index.json"


def load_into_pipeline(pipe, run_dir: Path, cfg, scale: float = 1.0) -> None:
    """The trained UNet (and text encoders, if trained) in place of a loaded base pipeline's; `scale` blends
    the weights: base + scale x (trained - base)."""
    folder = Path(run_dir) / "diffusers"
    denoiser = "transformer" if getattr(pipe, "transformer", None) is not None else "unet"
    # only the CLIPs train (a DiT's T5 or LLM stays frozen): reloading those would read GBs for nothing
    names = [denoiser] + [n for n in ("text_encoder", "text_encoder_2") if cfg.train_text_encoder
                          and type(getattr(pipe, n, None)).__name__.startswith("CLIP")]
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
    into place, keeping the base's sampling scheduler; and the same weights as one single-file checkpoint."""
    fam = comps.family
    tes = [modules.get(n, te) for n, te in zip(fam.text_encoder_names, comps.text_encoders)]
    pipe = fam.make_pipeline(comps, unet=modules["unet"], text_encoders=tes)
    pipe.scheduler = _sampling_scheduler(comps) or pipe.scheduler
    single = Path(folder) / f"{cfg.adaptor_name}.safetensors"
    with _ema_weights(modules["unet"]):
        return save_pipeline(pipe, fam, Path(folder) / "diffusers", single, {
            "modelspec.sai_model_spec": "1.0.0", "modelspec.title": cfg.adaptor_name,
            "modelspec.architecture": fam.modelspec_architecture(comps, "-").rsplit("/", 1)[0],
            "modelspec.prediction_type": fam.prediction_type(comps),
            "ss_ema": str(bool(cfg.use_ema))})


def save_pipeline(pipe, fam, final: Path, single: Path, metadata: dict[str, str]) -> dict[str, str]:
    """`pipe` as a diffusers folder `final` (built in a temp folder and renamed into place, text encoders in the
    classic layout) and as the single-file checkpoint `single` (also engine/tools' merge into a base)."""
    tmp = atomic.temp_dir(final.parent, "diffusers")
    size = sum(p.numel() * p.element_size() for m in pipe.components.values() if isinstance(m, torch.nn.Module)
               for p in m.parameters())
    try:
        with atomic.disk_full_guard(final, size):
            pipe.save_pretrained(tmp, safe_serialization=True)
            _resave_text_encoders_classic(pipe, tmp, list(fam.kohya_te_prefixes))  # the CLIPs
        atomic.normal_modes(tmp)
        own = getattr(fam, "checkpoint_state_dict", None)  # a DiT: its transformer under the original names
        if own is not None:
            atomic.save_safetensors(own(pipe.transformer), single, metadata)
        else:
            single_file.write_single_file(pipe, fam.name, single, metadata)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"diffusers": str(final), "single_file": str(single)}


def _resave_text_encoders_classic(pipe, folder: Path, names) -> None:
    """Each text encoder's weights in the layout every loader reads (`text_model.encoder.layers...`,
    `text_model.embeddings...`, `text_model.final_layer_norm...`, `text_projection.weight`).

    transformers 5 writes a CLIPTextModel as `encoder.layers...` unless it was loaded from the classic layout,
    and ComfyUI's diffusers-folder loader then finds every CLIP weight missing; transformers 5 itself reads the
    classic layout (its CLIPTextModel prefix conversion). save_original_format=False: written as given."""
    for name in names:
        te = getattr(pipe, name)
        state = te.state_dict()
        classic = canonical_keys(name, state)
        if classic.keys() != state.keys():
            te.save_pretrained(folder / name, state_dict=classic, safe_serialization=True,
                               save_original_format=False)


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
        f"- EMA: {f'yes, decay {cfg.ema_decay:g} (the saved weights are the average)' if cfg.use_ema else 'no'}",
    ]
    return finish_card(lines, [
        f"pipe = {fam.pipeline_class.__name__}.from_pretrained(\"{outputs.get('diffusers', 'diffusers')}\")",
        f"# or: {fam.pipeline_class.__name__}.from_single_file(\"{outputs.get('single_file', '')}\", "
        f"config=\"{outputs.get('diffusers', 'diffusers')}\")",
        f"image = pipe(\"{cfg.validation_prompt or 'your prompt'}\").images[0]",
    ], samples)
