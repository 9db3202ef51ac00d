"""Sharded training inside the loop: distributed_strategy = "ddp" (accelerate's default: every process holds the
whole model), "fsdp" (PyTorch FSDP2 through accelerate: weights, gradients and optimizer state sharded across the
processes) or "deepspeed" (ZeRO stage 2 or 3, an optional extra). The launch is the same for all three
(`accelerate launch --multi_gpu --num_processes N`): the strategy is chosen here, from the config.

Whatever shards the weights, a run's outputs look like any other run's: before anything is written the whole
weights are gathered (every process takes part) into plain modules on the main process, which alone writes.
Checkpoints keep accelerate's own sharded model and optimizer state, plus the gathered weights and outputs every
checkpoint has.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

STRATEGIES = ("ddp", "fsdp", "deepspeed")
OPTIONS = {"fsdp": ("fsdp_sharding", "fsdp_cpu_offload", "fsdp_activation_checkpointing"),
           "deepspeed": ("deepspeed_stage", "deepspeed_offload")}
INSTALL_DEEPSPEED = "pip install -e '.[deepspeed]' (or pip install deepspeed)"
# What a sharded run cannot do (yet), and why: {field: (what counts as "on", the reason)}.
_NOT_SHARDED = {
    "train_text_encoder": "accelerate shards one model per run (the UNet or transformer)",
    "use_ema": "the EMA copy would hold the whole UNet on every process, which is what sharding avoids",
    "blocks_to_swap": "block swap moves whole blocks between CPU and GPU; use fsdp_cpu_offload instead",
    "torch_compile": "compiling a sharded model is not supported here yet",
    "validation_prompt": "sample images would need the whole model on one process during training",
    "validation_split": "validation loss would need the whole model on one process during training",
    "validation_data_dir": "validation loss would need the whole model on one process during training",
    "save_every_n_steps": "use checkpointing_steps: every checkpoint holds the gathered model too",
    "save_every_n_epochs": "use checkpointing_steps: every checkpoint holds the gathered model too",
}


def field_problem(values: dict[str, Any], defaults: dict[str, Any]) -> str | None:
    """The config rule between the strategy and its options (engine.config raises it as a ConfigError)."""
    strategy = values["distributed_strategy"]
    for other, names in OPTIONS.items():
        changed = [n for n in names if values[n] != defaults[n]]
        if other != strategy and changed:
            return (f"{changed[0]} = {_toml(values[changed[0]])} is a {other} option but distributed_strategy = "
                    f"\"{strategy}\"; set distributed_strategy = \"{other}\" or leave {changed[0]} unset")
    if strategy == "ddp":
        return None
    if values["method"] != "full":
        # LoRA's trained weights are a few MB: sharding them saves nothing, and the frozen base FSDP could shard
        # is better shrunk by quantize_base / block swap, which sharding does not combine with
        return (f"distributed_strategy = \"{strategy}\" needs method = \"full\" (method = \"{values['method']}\" "
                "trains an adaptor of a few MB, which ddp handles as well); use distributed_strategy = \"ddp\"")
    for name, why in _NOT_SHARDED.items():
        if values[name] not in (None, False, 0, 0.0, ""):
            return (f"{name} = {_toml(values[name])} cannot be used with distributed_strategy = \"{strategy}\": "
                    f"{why}; turn {name} off or use distributed_strategy = \"ddp\"")
    if strategy == "fsdp" and values["fsdp_activation_checkpointing"] and values["gradient_checkpointing"]:
        return ("fsdp_activation_checkpointing = true and gradient_checkpointing = true both recompute "
                "activations; keep one")
    return None


def _toml(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else f"\"{v}\"" if isinstance(v, str) else str(v)


def deepspeed_missing() -> str | None:
    """The message for distributed_strategy = "deepspeed" without DeepSpeed installed, else None."""
    if importlib.util.find_spec("deepspeed") is not None:
        return None
    return f"distributed_strategy = \"deepspeed\" needs DeepSpeed, which is not installed: {INSTALL_DEEPSPEED}"


def machine_problems(cfg) -> list[tuple[str, str]]:
    """(field, message) for what this machine lacks (engine.preflight and the loop both ask)."""
    missing = deepspeed_missing() if cfg.distributed_strategy == "deepspeed" else None
    return [("distributed_strategy", missing)] if missing else []


def accelerator_kwargs(cfg) -> dict:
    """What accelerate's Accelerator takes for the strategy: its plugin (none for ddp), and HSDP's mesh."""
    if cfg.distributed_strategy == "fsdp":
        import torch
        from accelerate import FullyShardedDataParallelPlugin
        if cfg.fsdp_cpu_offload:  # read by accelerate only to give offloaded (CPU) tensors a gloo group beside NCCL
            os.environ.update(ACCELERATE_USE_FSDP="true", FSDP_OFFLOAD_PARAMS="true")
        return {"fsdp_plugin": FullyShardedDataParallelPlugin(
            fsdp_version=2,
            # FSDP2 says "shard_grad_op" as: keep the gathered weights from forward to backward
            reshard_after_forward=cfg.fsdp_sharding != "shard_grad_op",
            # CPU processes hold everything in CPU memory already (and FSDP2's offload policy needs a GPU)
            cpu_offload=cfg.fsdp_cpu_offload and torch.cuda.is_available(),
            # one FSDP unit per block the model names as never to be split (diffusers' _no_split_modules:
            # BasicTransformerBlock, ResnetBlock2D... for a UNet; the transformer blocks of a DiT)
            auto_wrap_policy="transformer_based_wrap",
            activation_checkpointing=cfg.fsdp_activation_checkpointing,
            state_dict_type="SHARDED_STATE_DICT",
            cpu_ram_efficient_loading=False),
            # accelerate refuses a ParallelismConfig on CPU processes: activate() sets that one up itself
            **(_hybrid(cfg) if torch.cuda.is_available() else {})}
    if cfg.distributed_strategy == "deepspeed":
        from accelerate import DeepSpeedPlugin
        offload = "cpu" if cfg.deepspeed_offload else "none"
        plugin = DeepSpeedPlugin(
            zero_stage=cfg.deepspeed_stage, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            gradient_clipping=float(cfg.max_grad_norm), offload_optimizer_device=offload,  # 0: none
            offload_param_device=offload if cfg.deepspeed_stage == 3 else "none",
            zero3_save_16bit_model=cfg.deepspeed_stage == 3,  # stage 3: gathered for saving (get_state_dict)
            zero3_init_flag=False)  # see activate()
        # accelerate reads it from the data loader's batch_size, which a bucketed (batch-sampler) loader lacks
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.train_batch_size
        return {"deepspeed_plugin": plugin}
    return {}


def _hybrid(cfg) -> dict:
    """fsdp_sharding = "hybrid": shard within a machine, replicate across machines (HSDP), as a
    ParallelismConfig. One machine, or one process per machine (accelerate builds no mesh without a shard
    dimension), is plain full sharding."""
    if cfg.fsdp_sharding != "hybrid":
        return {}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if world <= local or local == 1:
        return {}
    from accelerate.parallelism_config import ParallelismConfig
    return {"parallelism_config": ParallelismConfig(dp_replicate_size=world // local, dp_shard_size=local)}


def activate(accelerator, cfg) -> None:
    """accelerate sets up FSDP and DeepSpeed only on accelerators; on CPU processes (gloo) it silently falls back
    to DDP. FSDP2 runs on CPU with gloo, and so does DeepSpeed (its CPU accelerator, chosen by itself without a
    GPU), so the plugin is switched on here (tests and CPU-only machines)."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType
    if cfg.distributed_strategy == "fsdp" and accelerator.distributed_type == DistributedType.MULTI_CPU:
        state = accelerator.state
        state.fsdp_plugin = accelerator_kwargs(cfg)["fsdp_plugin"]
        # both shared states: each later AcceleratorState() copies PartialState's over its own
        PartialState().distributed_type = state.distributed_type = DistributedType.FSDP
        hybrid = _hybrid(cfg).get("parallelism_config")
        if hybrid is not None:  # the (replicate, shard) mesh fully_shard then spans
            state.parallelism_config, state.device_mesh = hybrid, hybrid.get_device_mesh("cpu")
    if cfg.distributed_strategy == "deepspeed" and accelerator.distributed_type == DistributedType.MULTI_CPU:
        state = accelerator.state
        plugin = accelerator_kwargs(cfg)["deepspeed_plugin"]
        plugin.set_mixed_precision(cfg.mixed_precision)
        plugin.select(_from_accelerator_state=True)
        state.deepspeed_plugins = plugin
        PartialState().distributed_type = state.distributed_type = DistributedType.DEEPSPEED
    if cfg.distributed_strategy == "deepspeed" and accelerator.distributed_type == DistributedType.DEEPSPEED:
        # accelerate registers its DeepSpeed config with transformers whatever zero3_init_flag says, and with
        # stage 3 transformers then loads every model partitioned (zero.Init): the frozen text encoders, which
        # DeepSpeed never prepares, would be empty placeholders. Models load whole; prepare() partitions the UNet.
        from transformers.integrations import unset_hf_deepspeed_config
        unset_hf_deepspeed_config()


def is_sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType
    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def gathered(accelerator, modules: dict) -> dict | None:
    """The trained modules with their whole weights: `modules` themselves unless sharded; sharded, plain copies
    on the main process and None on the others. Every process must call it (the gather is collective)."""
    if not is_sharded(accelerator):
        return modules
    out = {}
    for name, module in modules.items():
        state = _whole_state(accelerator, module)
        if accelerator.is_main_process:
            out[name] = _plain_copy(module, state)
    return out if accelerator.is_main_process else None


def _whole_state(accelerator, module) -> dict:
    """The whole state dict on the main process's CPU. accelerate's get_state_dict does it on GPUs; with CPU
    processes (gloo) torch leaves its "full" state dict as DTensors, so each is gathered here, one at a time."""
    from accelerate.utils import DistributedType
    if accelerator.distributed_type == DistributedType.DEEPSPEED:  # ZeRO-3 gathers through its engine
        return accelerator.get_state_dict(next(m for m in accelerator._models if m.module is module))
    if accelerator.device.type != "cpu":
        return accelerator.get_state_dict(module)
    state = {}
    for key, value in module.state_dict().items():  # the same keys in the same order on every process
        whole = value.full_tensor() if hasattr(value, "full_tensor") else value
        if accelerator.is_main_process:
            state[key] = whole.detach().cpu().clone()
    return state


def _plain_copy(module, state: dict):
    """A module of the sharded one's own class, holding `state` (built without initialising its weights)."""
    import torch
    from torch.distributed.fsdp import FSDPModule

    cls = next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))  # FSDP2 subclasses in place
    with torch.device("meta"):
        copy = cls.from_config(module.config)
    if any(name not in state for name, _ in copy.named_buffers()):  # buffers not in a state dict need real init
        copy = cls.from_config(module.config)
        copy.load_state_dict(state)
    else:
        copy.load_state_dict(state, assign=True)
    return copy.requires_grad_(False).eval()
