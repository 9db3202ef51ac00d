"""distributed_strategy: FSDP2, DeepSpeed ZeRO (when installed) and DDP with two CPU processes (gloo) train,
checkpoint and resume exactly, and end on the weights one process reaches with the same global batch; the
strategy options' rules; DeepSpeed's absence refused before training.

The one-process run accumulates two micro-batches of 2 per step, which are the two processes' batches of that
step (accelerate deals batch N*s+p to process p; engine.objective.step_generator numbers the draws the same way).
Tolerance: the only difference left is float32 summation order (the gradient summed over 4 images in one process,
or as two halves all-reduced / reduce-scattered). adam_epsilon = 1e-3 keeps Adam well-conditioned: with 1e-8
(the default) weights whose gradient is ~1e-8 get an update set by the gradient's last bits, and the same runs
differ by up to half a learning-rate step (measured 5.6e-4 of 4.0e-3 moved, FSDP); with 1e-3 FSDP's measured
difference is 1.2e-7 (3e-5 of the largest move; norm ratio 1.8e-6), ZeRO-2's and ZeRO-3's the same, DDP's 0,
so the bounds below hold them with a 30-50x margin and still fail on any real difference (a wrong batch, draw or
shard is ~1e-1 of the move).
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_images, run_training, sets
from test_cli import cli
from engine.builtin import resolve_builtin
from engine.config import ConfigError, validate
from engine.distributed import deepspeed_missing
from engine.events import read_events

pytestmark = pytest.mark.slow

COMMON = dict(pretrained_model_name_or_path="builtin:tiny-sd", method="full", resolution=64, learning_rate=1e-3,
              lr_warmup_steps=0, seed=3, train_batch_size=2, report_to="none", max_train_steps=3,
              adam_epsilon=1e-3)


def _unet(run):
    return load_file(str(run / "diffusers" / "unet" / "diffusion_pytorch_model.safetensors"))


def _assert_close(got: dict, want: dict) -> None:
    """Within float32 summation-order noise of `want`, measured against how far training moved the weights."""
    base = load_file(str(resolve_builtin("builtin:tiny-sd") / "unet" / "diffusion_pytorch_model.safetensors"))
    assert got.keys() == want.keys() == base.keys()
    moved = max((want[k] - base[k]).abs().max().item() for k in want)
    diff = max((got[k] - want[k]).abs().max().item() for k in want)
    norm = lambda d: torch.sqrt(sum((t ** 2).sum() for t in d)).item()  # noqa: E731
    ratio = norm([got[k] - want[k] for k in want]) / norm([want[k] - base[k] for k in want])
    assert moved > 1e-3 and diff <= 1e-3 * moved and ratio <= 1e-4, (diff, moved, ratio)


def _losses(run) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in read_events(run / "events.jsonl") if e["type"] == "step"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_images(tmp_path_factory.mktemp("fsdp") / "data")


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    run_training(sets(**COMMON, train_data_dir=data, output_dir=out, adaptor_name="one",
                      gradient_accumulation_steps=2), launch=False)
    return out / "one"


# each strategy's own options, and the files that show it sharded for real (beside the gathered weights)
SHARDED = {"fsdp": (dict(fsdp_activation_checkpointing=True), "pytorch_model_fsdp_0/*.distcp"),  # DCP shards
           "deepspeed": (dict(deepspeed_stage=3), "pytorch_model/zero_pp_rank_1_*_model_states.pt")}


@pytest.mark.parametrize("strategy", [
    "fsdp", pytest.param("deepspeed", marks=pytest.mark.skipif(deepspeed_missing() is not None,
                                                               reason="DeepSpeed is an optional extra"))])
def test_sharded_two_processes_checkpoint_resume_exactly_and_match_one_process(strategy, data, one_process,
                                                                               tmp_path):
    options, shards = SHARDED[strategy]
    args = dict(COMMON, train_data_dir=data, output_dir=tmp_path, adaptor_name="s", checkpointing_steps=2,
                distributed_strategy=strategy, **options)
    run_training(sets(**args), num_processes=2)
    run = tmp_path / "s"
    start = next(e for e in read_events(run / "events.jsonl") if e["type"] == "start")
    assert start["num_processes"] == 2
    checkpoint = run / "checkpoints" / "checkpoint-2"
    assert any(checkpoint.glob(shards))
    assert (checkpoint / "diffusers" / "model_index.json").is_file()
    # the outputs look like any run's: a whole pipeline and the single file, all keys present
    assert json.loads((run / "diffusers" / "model_index.json").read_text())["unet"][1] == "UNet2DConditionModel"
    assert (run / "s.safetensors").is_file()
    uninterrupted, losses = _unet(run), _losses(run)
    _assert_close(uninterrupted, _unet(one_process))
    assert [s for s, _ in losses] == [1, 2, 3]
    assert [round(v, 5) for _, v in losses] == [round(v, 5) for _, v in _losses(one_process)]

    run_training(sets(**args, resume_from_checkpoint="latest"), num_processes=2)
    assert [e for e in read_events(run / "events.jsonl") if e["type"] == "start"][-1]["first_step"] == 2
    assert _losses(run)[-1] == losses[-1]  # step 3 again: the same loss to the last bit
    resumed = _unet(run)
    assert max((resumed[k] - uninterrupted[k]).abs().max().item() for k in resumed) == 0

    # the sharded checkpoint under DDP: refused by name before accelerate tries to read it, nothing changed
    args["distributed_strategy"] = "ddp"
    args = {k: v for k, v in args.items() if k not in options}
    # (each process exits 2 with the message; torch's multi-process launcher then exits 1 and prints its own report)
    refused = run_training(sets(**args, resume_from_checkpoint="latest"), num_processes=2, expect_rc=1)
    assert f"error: resume_from_checkpoint: {run / 'checkpoints' / 'checkpoint-2'} was saved under " \
           f"distributed_strategy = '{strategy}'" in refused.stderr
    assert _unet(run).keys() == resumed.keys() and all(torch.equal(_unet(run)[k], resumed[k]) for k in resumed)


def test_ddp_two_processes_match_one_process(data, one_process, tmp_path):
    run_training(sets(**COMMON, train_data_dir=data, output_dir=tmp_path, adaptor_name="ddp"), num_processes=2)
    _assert_close(_unet(tmp_path / "ddp"), _unet(one_process))


@pytest.mark.parametrize("values, words", [
    (dict(fsdp_cpu_offload=True), ["fsdp_cpu_offload = true", 'distributed_strategy = "ddp"']),
    (dict(distributed_strategy="fsdp", deepspeed_stage=3), ["deepspeed_stage = 3", 'distributed_strategy = "fsdp"']),
    (dict(distributed_strategy="deepspeed", fsdp_sharding="hybrid"),
     ['fsdp_sharding = "hybrid"', 'distributed_strategy = "deepspeed"']),
    (dict(distributed_strategy="fsdp", method="lora"), ['needs method = "full"']),
    (dict(distributed_strategy="fsdp", train_text_encoder=True), ["train_text_encoder = true", "one model"]),
    (dict(distributed_strategy="fsdp", fsdp_activation_checkpointing=True, gradient_checkpointing=True),
     ["keep one"]),
])
def test_strategy_options_that_do_not_fit_are_refused(values, words):
    with pytest.raises(ConfigError) as e:
        validate({"train_data_dir": "x", "method": "full", **values})
    assert all(w in str(e.value) for w in words), str(e.value)


def test_strategy_defaults_and_own_options_are_accepted():
    for values in ({}, dict(distributed_strategy="fsdp", fsdp_sharding="hybrid", fsdp_cpu_offload=True),
                   dict(distributed_strategy="deepspeed", deepspeed_stage=3, deepspeed_offload=True)):
        assert validate({"train_data_dir": "x", "method": "full", **values}).distributed_strategy in (
            "ddp", "fsdp", "deepspeed")


@pytest.mark.skipif(deepspeed_missing() is None, reason="DeepSpeed is installed here")
def test_deepspeed_without_deepspeed_is_refused_before_training(tmp_path, tiny_data):
    args = sets(**COMMON, train_data_dir=tiny_data, output_dir=tmp_path, adaptor_name="ds",
                distributed_strategy="deepspeed")
    check = cli("--check", *args)
    assert check.returncode == 2 and "needs DeepSpeed, which is not installed: pip install" in check.stderr
    proc = run_training(args, expect_rc=2, launch=False)
    assert "needs DeepSpeed, which is not installed: pip install -e '.[deepspeed]'" in proc.stderr
    assert not (tmp_path / "ds" / "diffusers").exists()
