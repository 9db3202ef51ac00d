"""Pre-flight: what would make a valid config fail once it runs, found before anything starts.

engine.config checks each value and the rules between values; this checks the config against this
machine: options that need CUDA or an optional package, the paths it reads and writes, a hub id while the
Hub cannot be reached, and the disk space checkpoints and outputs will take. The Training tab's Check and
Start and `python -m engine.train --check` run it; each problem names the field it is about.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from engine.events import format_duration
from engine.plan import counted, make_plan


@dataclass
class Problem:
    field: str  # the schema field it is about
    message: str
    severity: str = "error"  # error: the run would fail; warning: it may


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    plan: object = None  # engine.plan.Plan, once the data could be counted
    disk_bytes: int | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def by_field(self) -> dict[str, str]:
        """{field: its messages joined}, errors before warnings."""
        out: dict[str, list[str]] = {}
        for p in sorted(self.problems, key=lambda p: p.severity != "error"):
            out.setdefault(p.field, []).append(p.message)
        return {k: "; ".join(v) for k, v in out.items()}

    def summary(self) -> str:
        """"Ready: N steps, about T." when nothing stops the run, else how many problems stop it."""
        if not self.ok:
            n = len(self.errors)
            return f"Not ready: {counted(n, 'problem')} would stop the run."
        plan = self.plan
        steps = counted(plan.total_steps, "step") if plan and plan.total_steps else "steps counted when it starts"
        eta = plan.estimated_seconds if plan else None
        text = f"Ready: {steps}, about {format_duration(eta)}" if eta is not None else f"Ready: {steps}"
        if self.disk_bytes:
            text += f"; about {_size(self.disk_bytes)} of disk"
        n = len(self.warnings)
        return text + "." + (f" {counted(n, 'warning')}: see below." if n else "")


def _size(n: float) -> str:
    units = ("bytes", "KB", "MB", "GB", "TB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n, i = n / 1024, i + 1
    return f"{n:.0f} bytes" if i == 0 else f"{n:.1f} {units[i]}"


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def check_machine(cfg, out: list[Problem]) -> None:
    """Options that need CUDA, and the optional packages the config asks for."""
    cuda = _cuda()
    if cfg.optimizer == "adamw8bit":
        if not cuda:
            out.append(Problem("optimizer", 'optimizer = "adamw8bit" needs a CUDA GPU (bitsandbytes) and this '
                                            'machine has none; use "adamw" here'))
        elif not _has("bitsandbytes"):
            out.append(Problem("optimizer", 'optimizer = "adamw8bit" needs bitsandbytes: pip install bitsandbytes '
                                            "(or pip install -e '.[gpu]')"))
    from engine.quantize import machine_problems
    out.extend(Problem(key, message) for key, message in machine_problems(cfg))
    from engine import distributed
    out.extend(Problem(key, message) for key, message in distributed.machine_problems(cfg))
    if cfg.mixed_precision == "fp16" and not cuda:
        out.append(Problem("mixed_precision", 'mixed_precision = "fp16" needs a CUDA GPU and this machine has none; '
                                              'use "bf16" or "no" here'))
    if cfg.allow_tf32 and not cuda:
        out.append(Problem("allow_tf32", "allow_tf32 changes nothing without a CUDA GPU", "warning"))
    if cfg.torch_compile and not cuda and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        out.append(Problem("torch_compile", "torch_compile on a CPU needs a C++ compiler (g++ or clang++), and none "
                                            "is on PATH; install one or turn torch_compile off"))
    needs = {"prodigy": ("optimizer", "prodigyopt")}.get(cfg.optimizer)
    if needs and not _has(needs[1]):
        out.append(Problem(needs[0], f'optimizer = "{cfg.optimizer}" needs {needs[1]}: pip install {needs[1]}'))
    if cfg.report_to == "tensorboard" and not (_has("tensorboard") or _has("tensorboardX")):
        out.append(Problem("report_to", 'report_to = "tensorboard" needs tensorboard: pip install tensorboard, '
                                        'or report_to = "none"'))
    if cfg.report_to == "wandb" and not _has("wandb"):
        out.append(Problem("report_to", 'report_to = "wandb" needs wandb: pip install wandb, or use "tensorboard"'))
    if cfg.dataset_name is not None and not _has("datasets"):
        out.append(Problem("dataset_name", "dataset_name needs the datasets package: pip install datasets"))
    check_launch(cfg, out, cuda)


def check_launch(cfg, out: list[Problem], cuda: bool) -> None:
    """The [distributed] table against this machine: the GPUs it names exist, the config file is there."""
    from engine.launch import processes_per_machine, visible_gpus
    if cfg.accelerate_config_file:
        if not Path(cfg.accelerate_config_file).expanduser().is_file():
            out.append(Problem("accelerate_config_file", f"accelerate_config_file = {cfg.accelerate_config_file!r} "
                                                         "does not exist; write one with `accelerate config`"))
        return
    if not cuda:  # each process a CPU core at least (the studio's API must not start thousands)
        per, cores = processes_per_machine(cfg, 0), os.cpu_count() or 1
        if per > cores:
            out.append(Problem("num_processes", f"{per} processes on a CPU with {cores} cores: at most {cores} here"))
        return
    here = [g["id"] for g in visible_gpus()]
    if not here:  # no nvidia-smi to count them: the launch finds out
        return
    missing = [i for i in (cfg.gpu_ids or "").split(",") if i and i != "all" and i not in here]
    if missing:
        out.append(Problem("gpu_ids", f"gpu_ids = {cfg.gpu_ids!r}: this machine has no GPU {', '.join(missing)} "
                                      f"(it has {', '.join(here)})"))
    per = processes_per_machine(cfg, len(here))
    if per > len(here):
        out.append(Problem("num_processes", f"{per} processes per machine need {per} GPUs, one each; this machine "
                                            f"has {len(here)}"))


def _hub(name: str, key: str, out: list[Problem], repo_type: str = "model") -> None:
    from engine.hub import HubUnavailable, availability
    try:
        availability(name, repo_type)
    except HubUnavailable as e:
        out.append(Problem(key, f"{key}: {e}"))


def check_sources(cfg, out: list[Problem]) -> None:
    """The base model, VAE, data and checkpoint exist here, or can be downloaded now."""
    from engine.builtin import builtin_names, is_builtin
    from engine.families.base import ModelError, resolve_source
    base = cfg.pretrained_model_name_or_path
    if is_builtin(base):
        if base not in builtin_names():
            out.append(Problem("pretrained_model_name_or_path", f"unknown built-in model {base!r}; valid names: "
                                                                f"{', '.join(builtin_names())}"))
    else:
        try:
            source = resolve_source(base, cfg.allow_pickle)
        except ModelError as e:
            out.append(Problem("pretrained_model_name_or_path", str(e)))
        else:
            if source.kind == "hub":
                _hub(base, "pretrained_model_name_or_path", out)
    _check_objective(cfg, out)
    vae = cfg.pretrained_vae_model_name_or_path
    if vae and not Path(vae).expanduser().exists():
        if vae.startswith((".", "/", "~")) or vae.count("/") != 1:
            out.append(Problem("pretrained_vae_model_name_or_path", f"VAE {vae!r} not found: no such folder "
                                                                    "(and it is not a hub id of the form owner/name)"))
        else:
            _hub(vae, "pretrained_vae_model_name_or_path", out)
    if cfg.dataset_name and not Path(cfg.dataset_name).expanduser().exists() and cfg.dataset_name.count("/") == 1:
        _hub(cfg.dataset_name, "dataset_name", out, "dataset")
    resume = cfg.resume_from_checkpoint
    if resume and resume != "latest" and not Path(resume).expanduser().is_dir():
        out.append(Problem("resume_from_checkpoint", f"resume_from_checkpoint {resume!r} is not a folder; give a "
                                                     "checkpoint folder (runs/NAME/checkpoints/checkpoint-N) or latest"))


def _check_objective(cfg, out: list[Problem]) -> None:
    """Options of the other objective (flow matching vs noise prediction), for a family known without loading
    the model: set by model_family, or read from a local folder's model_index.json."""
    from engine.families import FAMILIES, ModelError, detect_family
    from engine.families.base import resolve_source
    from engine.objective_flow import option_problems

    name = None if cfg.model_family == "auto" else cfg.model_family
    if name is None and not cfg.pretrained_model_name_or_path.startswith("builtin:random-"):  # GBs to build
        try:
            source = resolve_source(cfg.pretrained_model_name_or_path, cfg.allow_pickle)
            name = detect_family(source) if source.kind == "dir" else None
        except (ModelError, OSError, ValueError):
            return  # check_sources reports the model itself
    if name in FAMILIES:
        from engine.quantize import family_problems
        problems = option_problems(cfg, FAMILIES[name]) + family_problems(cfg, FAMILIES[name])
        out.extend(Problem(key, message) for key, message in problems)


def _existing_parent(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(cfg, total_steps: int | None, report: Report) -> None:
    """The runs folder can be made and written, and its disk holds the checkpoints and outputs."""
    from engine.disk_estimate import estimate
    out = Path(cfg.output_dir).expanduser()
    where = _existing_parent(out)
    if not where.is_dir():
        report.problems.append(Problem("output_dir", f"output_dir {cfg.output_dir!r}: {where} is a file, not a "
                                                     "folder; choose a folder (it is made if missing)"))
        return
    if not os.access(where, os.W_OK | os.X_OK):
        report.problems.append(Problem("output_dir", f"output_dir {cfg.output_dir!r}: {where} cannot be written "
                                                     "by this user; choose a folder you can write"))
        return
    need = estimate(cfg, total_steps)
    report.disk_bytes = need.total
    free = shutil.disk_usage(where).free
    if need.total > free:
        key = "checkpointing_steps" if need.checkpoints and need.checkpoint_bytes * need.checkpoints > free / 2 \
            else "output_dir"
        kept = (f"{need.checkpoints} checkpoints of about {_size(need.checkpoint_bytes)} and "
                if need.checkpoints else "")
        report.problems.append(Problem(key, f"the run needs about {_size(need.total)} of disk ({kept}outputs of "
                                            f"about {_size(need.output_bytes)}) and {where} has {_size(free)} free; "
                                            "free some space, keep fewer checkpoints (checkpoints_total_limit) or "
                                            "choose an output_dir on another disk"))


def check_data(cfg, report: Report, runs_root: Path | None) -> None:
    """The training folder holds images; the plan (steps and time) once it does."""
    from engine.data.items import DataError
    try:
        plan = make_plan(cfg, runs_root)
    except (DataError, OSError, ValueError) as e:
        report.problems.append(Problem("train_data_dir", str(e)))
        return
    if plan.num_images == 0:
        report.problems.append(Problem("train_data_dir", f"train_data_dir {cfg.train_data_dir} holds no images "
                                                         "(png, jpg, webp, ...) training can use"))
        return
    report.plan = plan


def preflight(cfg, runs_root: Path | None = None) -> Report:
    """Every check above, on a config that engine.config accepted."""
    report = Report()
    check_machine(cfg, report.problems)
    check_sources(cfg, report.problems)
    check_data(cfg, report, runs_root)
    total = report.plan.total_steps if report.plan else cfg.max_train_steps
    check_output(cfg, total, report)
    return report
