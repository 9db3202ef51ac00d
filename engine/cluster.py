"""Training on several machines: each node's `accelerate launch` command, and a SLURM batch script.

    python -m engine.cluster CONFIG.toml --nodes 2 --gpus-per-node 4 [--main-ip HOST] [--port N]
                             [--time 04:00:00] [--partition P] [--sbatch train.sbatch] [--set key=value ...]

prints the command to run on each node (machine_rank 0 is the main node, at --main-ip) and, with --sbatch,
writes a script for `sbatch`: one task per node (srun), the main node's address from `scontrol show
hostnames`, each node's machine_rank from $SLURM_NODEID. The nodes' flags come from engine.launch, so they
are the flags the studio's runs use; --nodes and --gpus-per-node replace the config's num_machines and
num_processes (accelerate counts processes over all nodes: nodes x GPUs per node).

What it assumes: the project, its Python environment, the config and the data are at the same paths on every
node, and output_dir is on a filesystem every node sees (as a cluster's home or scratch is): only the main
process writes the run's outputs, and every process reads the checkpoints to resume (accelerate's save_state
also writes each process's RNG state there).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from engine.config import ConfigError, load_config
from engine.launch import DEFAULT_PORT, LAUNCHER, launch_command
from engine.paths import PROJECT_ROOT

NODE_ID, MASTER = "$SLURM_NODEID", "$MASTER_ADDR"  # filled in by the shell on each node


def node_commands(cfg, config_path: str, nodes: int, gpus_per_node: int, main_ip: str, port: int,
                  overrides: list[str] = ()) -> list[list[str]]:
    """One argv per node, machine_rank 0 first."""
    if cfg.gpu_ids not in (None, "all") and len(cfg.gpu_ids.split(",")) < gpus_per_node:
        raise ConfigError(f"gpu_ids = {cfg.gpu_ids!r} lists fewer GPUs than --gpus-per-node {gpus_per_node}; unset "
                          "gpu_ids (the GPUs SLURM gives a job are the visible ones) or lower --gpus-per-node")
    sets = [x for o in overrides for x in ("--set", o)]
    return [launch_command(cfg, config_path, LAUNCHER, num_processes=nodes * gpus_per_node, num_machines=nodes,
                           machine_rank=rank, main_process_ip=main_ip, main_process_port=port) + sets
            for rank in range(nodes)]


def _shell(argv: list[str]) -> str:
    """argv as shell words; the SLURM variables stay variables, quoted for the shell to expand."""
    return " ".join(f'"{a}"' if a in (NODE_ID, MASTER) else shlex.quote(a) for a in argv)


def sbatch_script(cfg, config_path: str, nodes: int, gpus_per_node: int, port: int, time: str | None,
                  partition: str | None, job_name: str, overrides: list[str] = ()) -> str:
    argv = node_commands(cfg, config_path, nodes, gpus_per_node, MASTER, port, overrides)[0]
    rank_at = argv.index("--machine_rank") + 1
    argv[rank_at] = NODE_ID
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", f"#SBATCH --nodes={nodes}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --gpus-per-node={gpus_per_node}"]
    lines += [f"#SBATCH --time={time}"] if time else []
    lines += [f"#SBATCH --partition={partition}"] if partition else []
    lines += [f"#SBATCH --output={job_name}-%j.out", "", "set -euo pipefail",
              f"cd {shlex.quote(str(PROJECT_ROOT))}",
              f"export PYTHONPATH={shlex.quote(str(PROJECT_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}",
              "# the first node of the job is the main one (machine_rank 0)",
              'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
              "# one launcher per node; each starts one training process per GPU",
              f"srun --nodes={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {shlex.quote(_shell(argv))}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="TOML config file (at the same path on every node)")
    p.add_argument("--nodes", type=int, required=True, help="machines training together")
    p.add_argument("--gpus-per-node", type=int, required=True, help="GPUs (training processes) on each machine")
    p.add_argument("--main-ip", help="address of the main node (machine_rank 0) for the printed commands "
                                     "(default: the config's main_process_ip, else 127.0.0.1 for --nodes 1)")
    p.add_argument("--port", type=int, help=f"port on the main node (default: the config's, else {DEFAULT_PORT})")
    p.add_argument("--time", help="SLURM time limit, e.g. 04:00:00")
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--sbatch", type=Path, help="write a SLURM batch script here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key on every node (repeatable)")
    args = p.parse_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 1:
        p.error("--nodes and --gpus-per-node must be at least 1")
    config_path = str(Path(args.config).expanduser().resolve())  # every node runs it from the project folder
    try:
        cfg = load_config(config_path, args.overrides)
        if cfg.accelerate_config_file:  # every node reads it from the same place
            cfg = cfg.replace(accelerate_config_file=str(Path(cfg.accelerate_config_file).expanduser().resolve()))
        port = args.port or cfg.main_process_port or DEFAULT_PORT
        main_ip = args.main_ip or cfg.main_process_ip or ("127.0.0.1" if args.nodes == 1 else None)
        if main_ip is None and not args.sbatch:
            raise ConfigError("give --main-ip (the main node's address) or set main_process_ip in the config; "
                              "with --sbatch the script finds it itself")
        if main_ip is not None:
            for rank, cmd in enumerate(node_commands(cfg, config_path, args.nodes, args.gpus_per_node, main_ip,
                                                     port, args.overrides)):
                print(f"# node {rank}{' (main)' if rank == 0 else ''}\n{shlex.join(cmd)}")
        if args.sbatch:
            from engine.atomic import write_bytes
            script = sbatch_script(cfg, config_path, args.nodes, args.gpus_per_node, port, args.time, args.partition,
                                   f"train-{cfg.adaptor_name}", args.overrides)
            write_bytes(args.sbatch, script.encode())
            args.sbatch.chmod(0o755)
            print(f"# wrote {args.sbatch}: submit it with  sbatch {shlex.quote(str(args.sbatch))}")
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
