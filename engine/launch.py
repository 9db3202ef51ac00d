"""The `accelerate launch` command of a run, from its config's [distributed] table: one function for the
studio's queue (engine.jobs), `python -m engine.cluster`, the speed bench and the tests.

    python -m engine.launch CONFIG.toml [--set key=value ...] [--print]

runs (or prints) `accelerate launch <flags> -m engine.train CONFIG.toml` on this machine. The flags are
accelerate's own: --num_processes counts every machine's processes together, --multi_gpu whenever there is
more than one (on a CPU accelerate then forms a gloo group), --gpu_ids picks this machine's GPUs (accelerate
applies it as CUDA_VISIBLE_DEVICES), and --num_machines/--machine_rank/--main_process_ip/--main_process_port
join several machines. A config with accelerate_config_file launches with --config_file instead.
The app process never imports torch: GPUs are counted with nvidia-smi.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from engine.config import Config, ConfigError, load_config

LAUNCHER = [sys.executable, "-m", "accelerate.commands.launch"]  # accelerate's own CLI, from this environment
DEFAULT_PORT = 29500  # accelerate's (and torchrun's) default


def nvidia_smi(query: str, gpu_id: str | None = None) -> list[list[str]]:
    """nvidia-smi's CSV rows for `query` (e.g. "index,name,memory.total"), [] without a GPU or nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    cmd = [exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"] + ([f"--id={gpu_id}"] if gpu_id else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [[x.strip() for x in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


_listed: tuple[float, list[dict]] = (-1e9, [])
LIST_CACHE_S = 5.0  # the form asks on every change; GPUs do not come and go that fast


def visible_gpus() -> list[dict]:
    """This machine's GPUs a training process can see: [{"id", "name", "memory_gb"}], CUDA_VISIBLE_DEVICES
    honoured (its ids as nvidia-smi numbers them); [] on a CPU-only machine."""
    global _listed
    if time.monotonic() - _listed[0] < LIST_CACHE_S:
        return _listed[1]
    rows = nvidia_smi("index,name,memory.total")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    keep = None if visible is None else [v.strip() for v in visible.split(",") if v.strip() not in ("", "-1")]
    gpus = []
    for row in rows:
        try:
            index, name, total = row[0], ",".join(row[1:-1]), float(row[-1])
        except (IndexError, ValueError):
            continue
        if keep is None or index in keep:
            gpus.append({"id": index, "name": name, "memory_gb": round(total / 1024, 1)})
    _listed = (time.monotonic(), gpus)
    return gpus


def processes_per_machine(cfg: Config, gpu_count: int | None = None) -> int:
    """Processes on each machine: num_processes / num_machines; unset, one per GPU of gpu_ids ("all": every
    visible GPU, counted here unless gpu_count is given), else one."""
    machines = cfg.num_machines or 1
    if cfg.num_processes is not None:
        return cfg.num_processes // machines
    if cfg.gpu_ids == "all":
        return max(1, len(visible_gpus()) if gpu_count is None else gpu_count)
    if cfg.gpu_ids:
        return len(cfg.gpu_ids.split(","))
    return 1


def total_processes(cfg: Config, gpu_count: int | None = None) -> int:
    """Processes over every machine (accelerate's --num_processes). With an accelerate config file: its own
    num_processes when it can be read, else 1."""
    if cfg.accelerate_config_file:
        return _file_processes(cfg.accelerate_config_file) or 1
    return processes_per_machine(cfg, gpu_count) * (cfg.num_machines or 1)


def effective_batch(cfg: Config, gpu_count: int | None = None) -> tuple[int, int, int, int]:
    """(images per process, processes, accumulation steps, images per optimizer step)."""
    procs = total_processes(cfg, gpu_count)
    per, accum = cfg.train_batch_size, cfg.gradient_accumulation_steps
    return per, procs, accum, per * procs * accum


def _file_processes(path: str) -> int | None:
    try:
        from accelerate.commands.config.config_args import load_config_from_file
        return int(load_config_from_file(path).num_processes)
    except Exception:  # a missing or foreign file: the launch itself will say what is wrong
        return None


def launch_flags(cfg: Config, num_processes: int | None = None, num_machines: int | None = None,
                 machine_rank: int | None = None, main_process_ip: str | None = None,
                 main_process_port: int | None = None) -> list[str]:
    """accelerate launch's flags for cfg (the program not included). The keyword arguments override the
    config's (engine.cluster gives each node its rank); num_processes is the total over every machine."""
    machines = num_machines or cfg.num_machines or 1
    flags: list[str] = []
    if cfg.accelerate_config_file:
        path = Path(cfg.accelerate_config_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"accelerate_config_file = {cfg.accelerate_config_file!r} does not exist here; run "
                              "`accelerate config --config_file PATH` to write one, or unset it")
        flags += ["--config_file", str(path)]
        # a command-line flag overrides the file in accelerate's launcher: only what is given here (the file's
        # distributed_type decides multi-GPU, FSDP or DeepSpeed)
        for flag, value in (("num_processes", num_processes), ("num_machines", num_machines),
                            ("machine_rank", machine_rank), ("main_process_ip", main_process_ip),
                            ("main_process_port", main_process_port)):
            if value is not None:
                flags += [f"--{flag}", str(value)]
    else:
        total = num_processes or processes_per_machine(cfg) * machines
        if total % machines:
            raise ConfigError(f"{total} processes cannot be split evenly over {machines} machines")
        if total > 1:
            flags.append("--multi_gpu")  # DDP; on a CPU accelerate's gloo backend
        flags += ["--num_processes", str(total), "--num_machines", str(machines)]
        if cfg.gpu_ids:
            flags += ["--gpu_ids", cfg.gpu_ids]
        if machines > 1:
            rank = machine_rank if machine_rank is not None else cfg.machine_rank
            ip = main_process_ip or cfg.main_process_ip
            if rank is None:
                raise ConfigError(f"num_machines = {machines}: set this machine's machine_rank (0 on the main "
                                  "machine), e.g. --set machine_rank=1; python -m engine.cluster prints each node's "
                                  "command")
            if not ip:
                raise ConfigError(f"num_machines = {machines} needs main_process_ip, the address of the machine of "
                                  "rank 0")
            flags += ["--machine_rank", str(rank), "--main_process_ip", ip]
        port = main_process_port or cfg.main_process_port
        if port or machines > 1:
            flags += ["--main_process_port", str(port or DEFAULT_PORT)]
    # the config decides these for the run (the engine passes them to its Accelerator too): said explicitly so
    # neither a default accelerate config nor the launcher's guesses change them
    flags += ["--mixed_precision", cfg.mixed_precision, "--dynamo_backend", "no"]
    return flags


def launch_command(cfg: Config, config_path: str | os.PathLike, launcher: list[str] | None = None,
                   **overrides) -> list[str]:
    """The whole argv: accelerate's launcher, its flags, then `-m engine.train CONFIG`."""
    return [*(launcher or LAUNCHER), *launch_flags(cfg, **overrides), "-m", "engine.train", str(config_path)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.launch",
                                description="Train a config with the `accelerate launch` flags of its [distributed] "
                                            "table.")
    p.add_argument("config", help="TOML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable); the launch flags see it too")
    p.add_argument("--print", action="store_true", help="print the command instead of running it")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        cmd = launch_command(cfg, args.config)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    cmd += [x for o in args.overrides for x in ("--set", o)]
    if args.print:
        import shlex
        print(shlex.join(cmd))
        return 0
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
