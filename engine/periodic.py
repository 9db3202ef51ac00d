"""What the training loop does between steps besides training: sample images, the validation loss, and
intermediate adaptors. Each is due by steps (sample_every_n_steps, validation_loss_steps, save_every_n_steps),
by epochs (validation_epochs, an epoch for the loss unless validation_loss_steps, save_every_n_epochs), at the
start (sample_at_first) or at the end; none runs twice at one step.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine import atomic, finite
from engine.sampling.validation import validation_images

INTERMEDIATE = "intermediate"


@dataclass
class Periodic:
    cfg: Any
    accelerator: Any
    events: Any
    run_dir: Path
    sample: Callable[[str, int], list]  # (tag, step) -> engine.sampling.validation.Sample list
    validation_loss: Callable[[], float] | None  # the held-out loss, or None without held-out images
    write_adaptor: Callable[[Path, Any], dict]  # (folder, cfg) -> files written (method.write_outputs)
    unwrapped: dict
    total_steps: int
    adaptor_bytes: Callable[[], int] = lambda: 0  # what an adaptor takes, to say how much to free on a full disk
    samples: list[str] = field(default_factory=list)  # sample images, relative to the run folder
    _done: dict[str, int] = field(default_factory=dict)  # what ran at which step

    def _once(self, what: str, step: int) -> bool:
        if self._done.get(what) == step:
            return False
        self._done[what] = step
        return True

    def at_start(self, step: int) -> None:
        """Before the first step: the baseline the curves start from (not on a resume)."""
        if step:
            return
        if self.cfg.sample_at_first and self._wants_samples():
            self._sample(0, 0)
        if self.validation_loss:
            self._loss(0, 0)

    def after_step(self, step: int, epoch: int) -> bool:
        """After optimizer step `step` (epoch counts from 1); True if anything ran (its time is not training's)."""
        cfg = self.cfg
        ran = False
        if cfg.sample_every_n_steps and step % cfg.sample_every_n_steps == 0 and self._wants_samples():
            ran |= self._sample(step, epoch)
        if self.validation_loss and cfg.validation_loss_steps and step % cfg.validation_loss_steps == 0:
            ran |= self._loss(step, epoch)
        if cfg.save_every_n_steps and step % cfg.save_every_n_steps == 0 and step < self.total_steps:
            ran |= self._save(step, epoch)  # at the last step the run's own output is that adaptor
        return ran

    def after_epoch(self, step: int, epoch: int, last: bool, finished: bool) -> bool:
        """last: the final epoch; finished: training reached its last step."""
        cfg = self.cfg
        end = last or finished
        ran = False
        if self._wants_samples() and (epoch % cfg.validation_epochs == 0 or end):
            ran |= self._sample(step, epoch)
        if self.validation_loss and (not cfg.validation_loss_steps or end):
            ran |= self._loss(step, epoch)
        if cfg.save_every_n_epochs and epoch % cfg.save_every_n_epochs == 0 and not end:
            ran |= self._save(step, epoch)  # the final adaptor is the run's own output
        return ran

    def _wants_samples(self) -> bool:
        return bool(self.cfg.validation_prompt) and self.cfg.num_validation_images > 0

    def _sample(self, step: int, epoch: int) -> bool:
        if not self._once("sample", step):
            return False
        if not self.accelerator.is_main_process:
            return True
        for s in self.sample(f"epoch{epoch:03d}-step{step:06d}", step):
            self.samples.append(str(s.path.relative_to(self.run_dir)))
            self.events.emit("sample", path=str(s.path), prompt=s.prompt.prompt, prompt_index=s.prompt.index,
                             step=step, epoch=epoch, settings=s.settings)
        return True

    def _loss(self, step: int, epoch: int) -> bool:
        if not self._once("loss", step):
            return False
        value = self.validation_loss()  # every process computes it (no collectives inside), the main one reports
        self.accelerator.log({"validation_loss": value}, step=step)
        self.events.emit("validation_loss", step=step, epoch=epoch, loss=value)
        return True

    def _save(self, step: int, epoch: int) -> bool:
        if not self._once("save", step):
            return False
        finite.check_before_save(self.accelerator, self.unwrapped, None, step, self.run_dir / "checkpoints")
        if not self.accelerator.is_main_process:
            return True
        name = f"{self.cfg.adaptor_name}-step{step:06d}"  # kohya-style distinct file names
        parent = self.run_dir / INTERMEDIATE
        final = parent / name
        staging = atomic.temp_dir(parent, name)
        try:
            with atomic.disk_full_guard(final, self.adaptor_bytes, lambda: shutil.rmtree(staging, ignore_errors=True)):
                files = self.write_adaptor(staging, self.cfg.replace(adaptor_name=name))
            atomic.normal_modes(staging)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        files = {k: str(final / Path(v).relative_to(staging)) for k, v in files.items()}
        self.events.emit("adaptor", path=str(final), step=step, epoch=epoch, files=files)
        return True


@contextmanager
def on_device(modules, device):
    """Bring offloaded modules to the device for a moment (validation), then back to the CPU."""
    for m in modules:
        m.to(device)
    try:
        yield
    finally:
        for m in modules:
            m.to("cpu")


def make_sampler(comps, unet, text_encoders, cfg, device, dtype, run_dir: Path, idle: list):
    def sample(tag: str, step: int):
        with on_device(idle if device.type == "cuda" else [], device):
            return validation_images(comps, unet, text_encoders, cfg, device, dtype, run_dir / "samples", tag, step)
    return sample
