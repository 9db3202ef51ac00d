"""The training loop, read top to bottom: set up, load, data, optimizer, prepare, resume, train, save.

Runs in one process or several under `accelerate launch`. Only the main process writes events and files.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from engine import block_swap, distributed, export, finite, quantize, run_files
from engine import checkpoints as ckpt
from engine.atomic import DiskFull, disk_full_guard, is_disk_full
from engine.caches import TextEncoderCache, latent_encoder, text_encoders_key, vae_key
from engine.config import ConfigError, save_config
from engine.errors import TrainingError
from engine.data import (BucketBatchSampler, DataError, LatentCache, TrainDataset, build_caption, collate,
                         discover_items, tag_frequency)
from engine.events import EventLog
from engine.families import ModelError, get_family
from engine.methods import get_method
from engine.objective import compute_loss, step_generator
from engine.objective_flow import check_options
from engine.optim import build_lr_scheduler, build_optimizer, optimizer_step_count
from engine.paths import cache_root, safe_child
from engine.periodic import Periodic, make_sampler
from engine.sampling.validation_loss import ValidationLoss, split as split_validation


def run_dir_for(cfg) -> Path:
    return safe_child(Path(cfg.output_dir).expanduser(), cfg.adaptor_name)


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def train(cfg) -> dict:
    """Train as cfg says; returns the `done` event. Raises on failure after writing an `error` event."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed

    _check_tracker(cfg.report_to)
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision = \"fp16\" needs a CUDA GPU; use \"bf16\" or \"no\" on this machine")
    quantize.check(cfg)  # CUDA-only memory options: refused before anything loads
    for _, message in distributed.machine_problems(cfg):  # e.g. deepspeed chosen but not installed
        raise ConfigError(message)
    run_dir = run_dir_for(cfg)
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        # without CUDA, accelerate only forms a process group (gloo) when told it runs on CPU
        cpu=several and not torch.cuda.is_available(),
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision=cfg.mixed_precision,
        log_with=None if cfg.report_to == "none" else cfg.report_to,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        # non_blocking: pinned batches (pin_memory on CUDA) copy to the GPU while the step before still runs
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=torch.cuda.is_available()),
        **distributed.accelerator_kwargs(cfg),
    )
    distributed.activate(accelerator, cfg)
    main = accelerator.is_main_process
    resuming = cfg.resume_from_checkpoint is not None
    if main:  # a killed write's temps go; a killed run's folder is settled (run_files)
        run_files.recover(run_dir, resuming)
    accelerator.wait_for_everyone()
    _refuse_earlier_run(run_dir, cfg, resuming)  # every process reads it, so all stop together
    if main:
        _prepare_run_dir(run_dir, resuming)
    accelerator.wait_for_everyone()
    events = EventLog(run_dir / "events.jsonl", enabled=main, log_path=run_dir / "train.log")
    complete = False
    try:
        seed = [cfg.seed if cfg.seed is not None else int.from_bytes(os.urandom(3), "little")]
        broadcast_object_list(seed)  # every process must agree on a drawn seed
        cfg = cfg.replace(seed=seed[0])
        set_seed(cfg.seed)
        done = _train(cfg, accelerator, events, run_dir)
        complete = True
        return done
    except TrainingError as e:
        _report(events, e, str(e), e.hint)
        raise
    except (ConfigError, ModelError, DataError, FileNotFoundError) as e:
        _report(events, e, str(e), "fix the setting named above and start again")
        raise
    except Exception as e:
        if not is_disk_full(e):
            _report(events, e, f"{type(e).__name__}: {e}", f"see {run_dir / 'train.log'}")
            raise
        full = e if isinstance(e, DiskFull) else DiskFull(getattr(e, "filename", None) or run_dir, 0)
        resume = ("; then resume_from_checkpoint = \"latest\" continues from the last checkpoint"
                  if finite.last_good(run_dir / "checkpoints") else "")
        _report(events, full, str(full), f"make room on that disk, or choose an output_dir on another one{resume}")
        if full is e:
            raise
        raise full from e
    finally:
        accelerator.end_training()
        events.close()
        if main:  # the earlier run's files: dropped if this run completed, else given back (run_files)
            run_files.finish(run_dir, complete)


def _check_tracker(report_to: str) -> None:
    """wandb only when installed and configured: an unconfigured wandb would stop to ask for a login."""
    if report_to != "wandb":
        return
    import importlib.util
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError("report_to = \"wandb\" but wandb is not installed: pip install wandb, or use "
                          "report_to = \"tensorboard\" or \"none\"")
    netrc = Path.home() / ".netrc"
    configured = (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") in ("offline", "disabled")
                  or (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="replace")))
    if not configured:
        raise ConfigError("report_to = \"wandb\" but wandb is not logged in: run `wandb login`, set "
                          "WANDB_API_KEY (or WANDB_MODE=offline), or use report_to = \"tensorboard\"")


def _report(events: EventLog, exc: BaseException, message: str, hint: str) -> None:
    """An `error` event (printed once, by the event log); the CLI then need not print it again."""
    events.emit("error", message=message, hint=hint)
    exc.reported = events.enabled


def _refuse_earlier_run(run_dir: Path, cfg, resuming: bool) -> None:
    """A fresh run never mixes with, or silently replaces, an earlier run's adaptor or checkpoints; and a file
    where the run folder should be stops every run."""
    existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{existing} is a file, not a folder: " + (
            "choose another adaptor_name, or move the file" if existing == run_dir else
            f"set output_dir (now {cfg.output_dir!r}) to a folder; it is created if missing"))
    if resuming or cfg.overwrite:
        return
    output = get_method(cfg.method).output_path(run_dir, cfg)
    kept = run_files.earlier(run_dir) / output.relative_to(run_dir)  # a killed overwrite's earlier run
    earlier = output if output.exists() or kept.exists() else None
    if earlier is None and ckpt.list_checkpoints(run_dir / "checkpoints"):
        earlier = run_dir / "checkpoints"
    if earlier:
        raise ConfigError(f"{earlier} already exists from an earlier run: choose another adaptor_name, resume "
                          "with resume_from_checkpoint = \"latest\", or set overwrite = true to replace it")


def _prepare_run_dir(run_dir: Path, resuming: bool) -> None:
    with disk_full_guard(run_dir, 4096):
        run_dir.mkdir(parents=True, exist_ok=True)
    if not resuming:  # a fresh account: an earlier run's files are kept aside until this run completes
        run_files.set_aside(run_dir)


def _train(cfg, accelerator, events: EventLog, run_dir: Path) -> dict:
    started = time.time()
    device = accelerator.device
    weight_dtype = _weight_dtype(cfg.mixed_precision)
    if cfg.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- model
    with accelerator.main_process_first():  # a built-in is built once, by the main process
        family, source = get_family(cfg)
    check_options(cfg, family)
    quantize.check(cfg, family)
    comps = family.load(source, cfg, weight_dtype)
    if cfg.prediction_type:
        comps.noise_scheduler.register_to_config(prediction_type=cfg.prediction_type)
    prediction_type = family.prediction_type(comps)
    if cfg.clip_skip > 1 and family.name == "sdxl":
        raise ConfigError(f"clip_skip = {cfg.clip_skip} applies to SD 1.x/2.x; SDXL already uses the text encoders' "
                          "layer before the last: set clip_skip = 1")
    if family.objective == "noise" and prediction_type not in ("epsilon", "v_prediction"):
        raise ConfigError(f"the model's scheduler predicts {prediction_type!r}; set prediction_type to epsilon "
                          "or v_prediction")
    method = get_method(cfg.method)
    groups = method.prepare(comps, cfg)
    modules = method.trained_modules(comps, cfg)
    if cfg.blocks_to_swap:  # before the move, so the swapped blocks never land on the GPU whole
        swap = block_swap.install(comps.unet, cfg.blocks_to_swap, device)
        events.say(f"block swap: {swap.N} of {swap.n} transformer blocks ({block_swap.describe(comps.unet)}) in "
                   f"CPU memory, {swap.R} on {device}")
    comps.vae.to(device)
    comps.unet.to(device)  # prepare() moves only trained modules; textual inversion does not train the UNet
    for te in comps.text_encoders:
        te.to(device)
    if cfg.gradient_checkpointing:
        comps.unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            for te in comps.text_encoders:  # transformers 5 renamed it
                (getattr(te, "activation_checkpointing_enable", None) or te.gradient_checkpointing_enable)()

    # ---- data
    def warn(msg):
        events.emit("warning", message=msg)

    custom_items = getattr(method, "discover_items", None)
    items = (custom_items(cfg, comps, warn, device, accelerator, events.say) if custom_items
             else discover_items(cfg, warn))
    items, held_out = split_validation(items, cfg, warn)
    val = None
    if cfg.cache_latents:
        if not cfg.center_crop:
            warn("cache_latents freezes the crop to the centre (random crop needs fresh encodes)")
        cache = LatentCache(cache_root() / "latents", vae_key(cfg, source, comps.vae.dtype))
        encode = latent_encoder(comps, device)
        with accelerator.main_process_first():
            fresh = cache.prepare(items, cfg, encode, batch_size=max(1, cfg.train_batch_size))
            val = ValidationLoss(held_out, cfg, comps, cache, encode) if held_out else None
        events.say(f"latent cache: {fresh} latents encoded, the rest reused from {cache_root() / 'latents'}")
        dataset = cache.dataset(items, cfg)
    else:
        dataset = TrainDataset(items, cfg)
        val = ValidationLoss(held_out, cfg, comps) if held_out else None
    if val is not None:
        events.say(f"validation loss: {len(val)} held-out images at {len(val.timesteps)} fixed timesteps")
    loading = dict(collate_fn=collate, num_workers=cfg.dataloader_num_workers, pin_memory=device.type == "cuda",
                   persistent_workers=cfg.dataloader_num_workers > 0)
    bucket_sampler = getattr(method, "batch_sampler", lambda cfg, dataset: None)(cfg, dataset)
    if bucket_sampler is not None:  # the method batches (DreamBooth: subject and class examples together)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=bucket_sampler, **loading)
    elif cfg.enable_bucket:  # each batch from one bucket; the order is a function of (seed, epoch)
        bucket_sampler = BucketBatchSampler(dataset.bucket_of, cfg.train_batch_size, seed=cfg.seed)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=bucket_sampler, **loading)
    else:
        loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train_batch_size, shuffle=True, **loading)
    text_cache = None
    if cfg.cache_text_encoder_outputs:
        text_cache = TextEncoderCache(cache_root() / "text",
                                      text_encoders_key(cfg, source, family, comps.text_encoders[0].dtype), family,
                                      comps.tokenizers, comps.text_encoders, device, cfg.clip_skip)
        with accelerator.main_process_first():
            fresh = text_cache.prepare([build_caption(it.caption, cfg.trigger_word) for it in items]
                                       + ([""] if cfg.caption_dropout_rate else []) + (val.captions() if val else []))
        events.say(f"text-encoder cache: {fresh} captions encoded, the rest reused from {cache_root() / 'text'}")

    # What the caches replace is only needed again for validation images: keep it off the GPU meanwhile.
    idle = ([comps.vae] if cfg.cache_latents else []) + (list(comps.text_encoders) if text_cache else [])
    if device.type == "cuda":
        for m in idle:
            m.to("cpu")

    # ---- optimizer and schedule
    if cfg.scale_lr:
        factor = cfg.train_batch_size * cfg.gradient_accumulation_steps * accelerator.num_processes
        for g in groups:
            g["lr"] *= factor
    optimizer = build_optimizer(cfg, groups, on_cuda=device.type == "cuda")
    steps_per_epoch_guess = math.ceil(math.ceil(len(loader) / accelerator.num_processes)
                                      / cfg.gradient_accumulation_steps)
    total_steps = cfg.max_train_steps or cfg.num_train_epochs * steps_per_epoch_guess
    lr_scheduler = build_lr_scheduler(cfg, optimizer, total_steps, accelerator.num_processes)

    if cfg.attention == "eager":  # diffusers' default processor is SDPA; eager is the comparison
        from diffusers.models.attention_processor import AttnProcessor
        for m in (comps.unet, comps.vae):
            m.set_attn_processor(AttnProcessor())
    if cfg.channels_last:
        comps.unet.to(memory_format=torch.channels_last)
    if cfg.torch_compile:
        comps.unet.compile()  # in place: module, names and state dict unchanged, so saving is unaffected
    trained = list(modules.values())
    prepared = accelerator.prepare(*trained, optimizer, loader, lr_scheduler)
    trained, (optimizer, loader, lr_scheduler) = list(prepared[: len(trained)]), prepared[len(trained):]
    unwrapped = {name: accelerator.unwrap_model(m) for name, m in zip(modules, trained)}
    unet = trained[list(modules).index("unet")] if "unet" in modules else comps.unet
    trains_text = any(n in modules for n in family.text_encoder_names)
    text_encoders = [unwrapped.get(n, te) for n, te in zip(family.text_encoder_names, comps.text_encoders)]
    train_encoders = [trained[list(modules).index(n)] if n in modules else te
                      for n, te in zip(family.text_encoder_names, comps.text_encoders)]

    def encode_text(captions):
        if text_cache is not None:
            return text_cache.lookup(captions, device)
        with torch.set_grad_enabled(trains_text):
            return family.encode_prompt(comps.tokenizers, train_encoders, captions, device, cfg.clip_skip)

    def encode_eval(captions):  # the unwrapped encoders: no DDP collectives outside the training step
        if text_cache is not None:
            return text_cache.lookup(captions, device)
        return family.encode_prompt(comps.tokenizers, text_encoders, captions, device, cfg.clip_skip)

    steps_per_epoch = math.ceil(len(loader) / cfg.gradient_accumulation_steps)
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    stats = {"started_at": started, "num_train_images": len(dataset), "total_steps": total_steps,
             "tag_frequency": tag_frequency(items), "step": 0, "epoch": 0, "buckets": _bucket_counts(dataset)}

    def saved_bytes() -> int:  # counted only to say how much to free when a disk is full
        return sum(v.numel() * v.element_size() for sd in method.state_dicts(unwrapped).values() for v in sd.values())

    def write_outputs(folder: Path, whole: dict) -> dict[str, str]:
        stats["finished_at"] = time.time()
        return method.write_outputs(folder, cfg, comps, whole, stats)

    # ---- checkpoint hooks: save only the trained weights, never the frozen rest. Sharded (distributed.py),
    # accelerate saves and loads the model and optimizer shards itself; the hooks add the gathered weights.
    sharded = distributed.is_sharded(accelerator)

    def save_hook(models, weights, output_dir):
        while weights:
            weights.pop()
        whole = distributed.gathered(accelerator, unwrapped)  # every process takes part
        if accelerator.is_main_process:
            folder = Path(output_dir)
            ckpt.save_trained_state(folder / ckpt.STATE_FILE, method.state_dicts(whole))
            write_outputs(folder, whole)

    def load_hook(models, input_dir):
        while models:
            models.pop()
        if not sharded:
            method.load_state(unwrapped, ckpt.load_trained_state(Path(input_dir) / ckpt.STATE_FILE))

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    # ---- resume
    ckpt_dir = run_dir / "checkpoints"
    global_step, first_epoch, skip_batches = 0, 0, 0
    if cfg.resume_from_checkpoint:
        folder = ckpt.find_resume_dir(cfg.resume_from_checkpoint, ckpt_dir)
        if folder is None:
            events.emit("warning", message=f"no checkpoint in {ckpt_dir}; starting from the beginning")
        else:
            ckpt.check_strategy(folder, cfg)
            accelerator.load_state(str(folder))
            global_step = ckpt.read_progress(folder)["step"]
            first_epoch = global_step // steps_per_epoch
            skip_batches = (global_step % steps_per_epoch) * cfg.gradient_accumulation_steps
            events.say(f"resumed from {folder} at step {global_step}")

    if accelerator.is_main_process:
        save_config(cfg, run_dir / "config.toml")
        accelerator.init_trackers("adaptor-studio", config=_tracker_config(cfg))
    events.emit("start", adaptor_name=cfg.adaptor_name, method=cfg.method, model_family=family.name,
                model=source.name, run_dir=str(run_dir), num_images=len(items), num_examples=len(dataset),
                total_steps=total_steps, num_epochs=num_epochs, first_step=global_step,
                batch_size=cfg.train_batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                num_processes=accelerator.num_processes, prediction_type=prediction_type, seed=cfg.seed,
                resolution=cfg.resolution, learning_rate=cfg.learning_rate, buckets=stats["buckets"])

    # ---- train
    noise_scheduler = comps.noise_scheduler
    alphas_cumprod = getattr(noise_scheduler, "alphas_cumprod", None)  # none in a flow-matching schedule
    alphas_cumprod = alphas_cumprod.to(device) if alphas_cumprod is not None else None
    step_times: list[float] = []
    epoch = first_epoch
    micro_step = global_step * cfg.gradient_accumulation_steps
    accum_loss, accum_count = torch.zeros((), device=device), 0  # summed micro-batch losses since the last report
    accum_parts: dict[str, torch.Tensor] = {}  # the same for the parts a method reports (DreamBooth's prior loss)
    loss_fn = getattr(method, "compute_loss", compute_loss)
    eval_unet = unwrapped.get("unet", comps.unet)

    def validation_loss() -> float:
        with accelerator.autocast():
            return val(getattr(method, "validation_compute_loss", loss_fn), eval_unet, encode_eval,
                       [eval_unet, *text_encoders], device, weight_dtype, prediction_type, alphas_cumprod)

    periodic = Periodic(cfg, accelerator, events, run_dir,
                        make_sampler(comps, eval_unet, text_encoders, cfg, device, weight_dtype, run_dir, idle),
                        validation_loss if val is not None else None,
                        lambda folder, c: method.write_outputs(folder, c, comps, unwrapped, stats), unwrapped,
                        total_steps, adaptor_bytes=lambda: 2 * saved_bytes())
    periodic.at_start(global_step)
    last_tick, tick_step = time.time(), global_step
    for epoch in range(first_epoch, num_epochs):
        for m in trained:
            m.train()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)  # the shuffle order is a function of (seed, epoch): resumes see the same data
        if bucket_sampler is not None:
            bucket_sampler.set_epoch(epoch)  # accelerate does not reach it through its multi-process wrapper
        epoch_loader = loader
        if epoch == first_epoch and skip_batches:
            epoch_loader = accelerator.skip_first_batches(loader, skip_batches)
        for batch in epoch_loader:
            if global_step >= total_steps:  # e.g. resumed from a checkpoint at the very end
                break
            gen = step_generator(cfg.seed, micro_step, accelerator.process_index, device, accelerator.num_processes)
            micro_step += 1
            with accelerator.accumulate(*trained):
                loss = loss_fn(batch, comps, unet, encode_text, cfg, device, weight_dtype, prediction_type,
                               alphas_cumprod, gen)
                if isinstance(loss, tuple):
                    loss, parts = loss
                    for k, v in parts.items():
                        accum_parts[k] = accum_parts.get(k, 0) + v
                accum_loss += loss.detach()
                accum_count += 1
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                                cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            if hasattr(method, "after_optimizer_step"):  # full's EMA; textual inversion restores the other rows
                method.after_optimizer_step(unwrapped)
            stats.update(step=global_step, epoch=epoch + 1)
            if global_step % cfg.logging_steps == 0 or global_step >= total_steps:
                # the only host sync of the loop: loss (mean over micro-batches, steps since the last
                # report and processes), progress, the NaN check
                mean_loss = accelerator.gather((accum_loss / accum_count).reshape(1)).mean().item()
                parts = {k: accelerator.gather((v / accum_count).reshape(1)).mean().item()
                         for k, v in accum_parts.items()}
                accum_loss, accum_count, accum_parts = torch.zeros((), device=device), 0, {}
                finite.check_loss(mean_loss, global_step, ckpt_dir)
                now = time.time()
                step_times.append((now - last_tick) / max(1, global_step - tick_step))
                last_tick, tick_step = now, global_step
                recent = step_times[-20:]
                it_per_s = len(recent) / max(sum(recent), 1e-9)
                lr = lr_scheduler.get_last_lr()[0]
                accelerator.log({"loss": mean_loss, "lr": lr}, step=global_step)
                events.emit("step", step=global_step, total_steps=total_steps, epoch=epoch + 1, loss=mean_loss,
                            lr=lr, it_per_s=it_per_s, eta_s=(total_steps - global_step) / it_per_s,
                            peak_memory_mb=round(_peak_memory_mb(device), 1), **parts)
            if periodic.after_step(global_step, epoch + 1):
                last_tick, tick_step = time.time(), global_step  # sampling time is not training time
            if cfg.checkpointing_steps and global_step % cfg.checkpointing_steps == 0 and global_step < total_steps:
                size = finite.check_before_save(accelerator, unwrapped, optimizer, global_step, ckpt_dir)
                # weights and optimizer state, and the outputs (two copies of what the method saves, as a rule)
                ckpt.save_checkpoint(accelerator, ckpt_dir, global_step, epoch, cfg, events,
                                     lambda: size + 2 * saved_bytes())
                last_tick, tick_step = time.time(), global_step
            if global_step >= total_steps:
                break
        if periodic.after_epoch(global_step, epoch + 1, last=epoch + 1 == num_epochs,
                                finished=global_step >= total_steps):
            last_tick, tick_step = time.time(), global_step
        if global_step >= total_steps:
            break

    # ---- save: both formats and the model card, together or not at all (run_files.publish)
    accelerator.wait_for_everyone()
    finite.check_before_save(accelerator, unwrapped, None, global_step, ckpt_dir)
    outputs: dict[str, str] = {"run_dir": str(run_dir)}
    whole = distributed.gathered(accelerator, unwrapped)

    def write_set(folder: Path) -> dict[str, str]:
        made = write_outputs(folder, whole)
        final = {k: str(run_dir / Path(v).relative_to(folder)) for k, v in made.items()}  # what the card names
        card = method.model_card(cfg, comps, stats, {**outputs, **final}, periodic.samples)
        return {**made, "model_card": str(export.write_model_card(folder, card))}

    if accelerator.is_main_process:
        outputs.update(run_files.publish(run_dir, write_set, lambda: 2 * saved_bytes()))
        outputs["config"] = str(run_dir / "config.toml")
    return events.emit("done", outputs=outputs, elapsed=time.time() - started, step=global_step,
                       total_steps=total_steps, epoch=stats["epoch"],
                       optimizer_steps=optimizer_step_count(optimizer)) or {"outputs": outputs}


def _bucket_counts(dataset) -> list[dict]:
    """[{"resolution": [w, h], "count": examples}] for the buckets in use (one square bucket without bucketing)."""
    counts = np.bincount(np.asarray(dataset.bucket_of), minlength=len(dataset.buckets))
    return [{"resolution": list(size), "count": int(n)} for size, n in zip(dataset.buckets, counts)]


def _tracker_config(cfg) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if isinstance(v, (int, float, str, bool))}
