"""The [distributed] table: its checks, the `accelerate launch` flags it gives (read back by accelerate's own
parser), engine.cluster's per-node commands and SLURM script, and two "nodes" on this machine training one run."""
import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.launch import launch_command_parser
from accelerate.utils.launch import prepare_multi_gpu_env

from conftest import ROOT, make_images, run_training, sets
from engine import cluster
from engine.config import ConfigError, save_config, validate
from engine.events import read_events
from engine.launch import LAUNCHER, effective_batch, launch_command, launch_flags
from engine.plan import make_plan

TINY = dict(resolution=64, rank=4, lora_alpha=8, learning_rate=5e-3, lr_warmup_steps=0, seed=1, train_batch_size=2,
            report_to="none")


def cfg(**kw):
    return validate({"train_data_dir": ".", **kw})


def parsed(argv: list[str]):
    """accelerate's own reading of a command we generate (the launcher prefix taken off)."""
    assert argv[: len(LAUNCHER)] == LAUNCHER
    return launch_command_parser().parse_args(argv[len(LAUNCHER):])


@pytest.mark.parametrize("values, message", [
    (dict(num_machines=2, machine_rank=2, main_process_ip="10.0.0.1"), "machine_rank = 2 must be below num_machines"),
    (dict(num_machines=2), "num_machines = 2 needs main_process_ip"),
    (dict(num_machines=2, num_processes=3, main_process_ip="h"), "must be a multiple of num_machines = 2"),
    (dict(gpu_ids="0,zero"), "gpu_ids = '0,zero' must be GPU ids"),
    (dict(gpu_ids="1,1"), "each once"),
    (dict(gpu_ids="0", num_processes=2), "gpu_ids = '0' lists 1"),
    (dict(accelerate_config_file="a.yaml", num_processes=2), "unset num_processes"),
    (dict(accelerate_config_file="a.toml"), "must be a .yaml, .yml or .json"),
])
def test_bad_distributed_settings_are_refused_naming_the_key(values, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        cfg(**values)


def test_launch_flags_as_accelerate_reads_them(tmp_path):
    one = parsed(launch_command(cfg(), "c.toml"))  # a preset's empty table: one process, as before
    assert (one.num_processes, one.num_machines, one.multi_gpu, one.gpu_ids) == (1, 1, False, None)
    assert one.module and one.training_script == "engine.train" and one.training_script_args == ["c.toml"]

    ddp = parsed(launch_command(cfg(num_processes=2, mixed_precision="bf16"), "c.toml"))  # GPU ids absent: CPU gloo
    assert (ddp.num_processes, ddp.multi_gpu, ddp.gpu_ids, ddp.mixed_precision) == (2, True, None, "bf16")

    picked = parsed(launch_command(cfg(gpu_ids=" 1, 3 "), "c.toml"))  # one process per listed GPU
    assert (picked.num_processes, picked.multi_gpu, picked.gpu_ids) == (2, True, "1,3")

    node = parsed(launch_command(cfg(num_machines=2, machine_rank=1, main_process_ip="10.0.0.5", num_processes=4),
                                 "c.toml"))
    assert (node.num_processes, node.num_machines, node.machine_rank, node.main_process_ip,
            node.main_process_port) == (4, 2, 1, "10.0.0.5", 29500)
    with pytest.raises(ConfigError, match="set this machine's machine_rank"):
        launch_flags(cfg(num_machines=2, main_process_ip="10.0.0.5"))

    yaml = tmp_path / "acc.yaml"
    yaml.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 3\n"
                    "num_machines: 1\nmachine_rank: 0\nmixed_precision: 'no'\n")
    from_file = cfg(accelerate_config_file=str(yaml))
    assert parsed(launch_command(from_file, "c.toml")).config_file == str(yaml)
    assert effective_batch(from_file) == (1, 3, 1, 3)  # the file's processes count
    with pytest.raises(ConfigError, match="does not exist here"):
        launch_flags(cfg(accelerate_config_file=str(tmp_path / "missing.yaml")))
    assert effective_batch(cfg(train_batch_size=2, gradient_accumulation_steps=4, num_processes=2)) == (2, 2, 4, 16)


def test_the_plan_counts_each_process_share_of_the_batches(tmp_path):
    data = make_images(tmp_path / "data", n=8, size=(8, 8))
    one = make_plan(validate({"train_data_dir": str(data), "train_batch_size": 2}), tmp_path)
    two = make_plan(validate({"train_data_dir": str(data), "train_batch_size": 2, "num_processes": 2}), tmp_path)
    assert (one.steps_per_epoch, two.steps_per_epoch) == (4, 2)


def test_cluster_commands_and_sbatch_for_two_nodes_of_four_gpus(tmp_path, capsys):
    config = tmp_path / "run.toml"
    save_config(cfg(mixed_precision="bf16", adaptor_name="big"), config)
    script = tmp_path / "train.sbatch"
    assert cluster.main([str(config), "--nodes", "2", "--gpus-per-node", "4", "--main-ip", "10.0.0.7",
                         "--port", "29400", "--time", "04:00:00", "--partition", "gpu", "--sbatch", str(script),
                         "--set", "learning_rate=5e-5"]) == 0
    printed = [shlex.split(line) for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    assert len(printed) == 2
    for rank, argv in enumerate(printed):
        args = parsed(argv)
        assert (args.num_processes, args.num_machines, args.machine_rank, args.multi_gpu) == (8, 2, rank, True)
        assert (args.main_process_ip, args.main_process_port, args.mixed_precision) == ("10.0.0.7", 29400, "bf16")
        assert args.training_script_args == [str(config), "--set", "learning_rate=5e-5"]
        # accelerate's launcher turns them into torchrun's: 4 processes on each of 2 nodes, meeting at the main one
        if rank:  # (rank 0 would also probe that the port is free here)
            prepare_multi_gpu_env(args)
            assert (args.nproc_per_node, args.nnodes, args.node_rank, args.rdzv_endpoint) == ("4", "2", 1,
                                                                                            "10.0.0.7:29400")

    text = script.read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --time=04:00:00", "#SBATCH --partition=gpu"):
        assert line in text.splitlines()
    assert 'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    srun = shlex.split(next(x for x in text.splitlines() if x.startswith("srun ")))
    assert srun[:4] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1"] and srun[4:6] == ["bash", "-c"]
    # what each node's shell runs is that node's printed command, its rank and the main address filled in
    for rank, argv in enumerate(printed):
        filled = srun[6].replace('"$SLURM_NODEID"', str(rank)).replace('"$MASTER_ADDR"', "10.0.0.7")
        assert shlex.split(filled) == argv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_nodes_on_this_machine_resume_and_only_rank_0_writes(tmp_path):
    """Two `accelerate launch` process groups (machine_rank 0 and 1, one process each, meeting on 127.0.0.1)
    resume a run from its checkpoint and finish it. Node 1 reads its own copy of the run folder (a node-local
    disk): it resumes from there, and writes nothing into it but its own RNG state in a checkpoint."""
    data = make_images(tmp_path / "data", n=4)
    shared, local = tmp_path / "node0", tmp_path / "node1"
    common = dict(TINY, train_data_dir=str(data), adaptor_name="two", checkpointing_steps=1)
    run_training(sets(**common, output_dir=shared, max_train_steps=2), launch=False)  # checkpoint-1 to resume
    assert (shared / "two" / "checkpoints" / "checkpoint-1").is_dir()
    shutil.copytree(shared, local)
    before = _files(local)

    config = tmp_path / "two.toml"
    save_config(validate({**common, "output_dir": str(shared), "max_train_steps": 3,
                          "resume_from_checkpoint": "latest", "num_processes": 2, "num_machines": 2,
                          "main_process_ip": "127.0.0.1", "main_process_port": _free_port()}), config)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    nodes = [subprocess.Popen([sys.executable, "-m", "engine.launch", str(config), "--set", f"machine_rank={rank}",
                               *(["--set", f"output_dir={local}"] if rank else [])],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n\n".join(o[-4000:] for o in outs)

    events = read_events(shared / "two" / "events.jsonl")
    start, done = [e for e in events if e["type"] == "start"][-1], events[-1]
    assert start["num_processes"] == 2 and start["first_step"] == 1
    assert done["type"] == "done" and done["step"] == 3
    assert (shared / "two" / "checkpoints" / "checkpoint-2").is_dir()
    after = _files(local)
    assert {k: v for k, v in after.items() if k in before} == before, "node 1 changed the run's files"
    assert all(Path(k).name == "random_states_1.pkl" for k in set(after) - set(before)), set(after) - set(before)


def test_shipped_presets_leave_the_distributed_table_empty():
    from engine.config import LAUNCH_KEYS
    from engine.paths import PROJECT_ROOT
    from engine.presets import read_preset
    launch_keys = {*LAUNCH_KEYS, "accelerate_config_file"}  # a preset never holds a machine's GPUs or nodes
    for preset in sorted((PROJECT_ROOT / "presets").glob("*.toml")):
        assert not launch_keys & set(read_preset(preset)), preset.name
