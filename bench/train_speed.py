"""Training speed and memory through the engine's own CLI and loop, against the GPU's physical limit.

    python -m bench.train_speed [--device cuda|cpu] [--tiny] [--rows a,b] [--features [a,b]] [--processes 1,2]
                                [--json]

Full size: randomly initialised SD 1.5, SDXL, Flux.1 dev and SD3.5 Large built from their published configs
(builtin:random-sd15, random-sdxl; random-flux1, random-sd35 made on the GPU; no download), on synthetic images. `--tiny` runs the same rows on the tiny built-ins at
64px, for CPU-sized checks. Each row is one real `python -m engine.train` run; images/s is measured from its
step events after the warm-up steps, peak memory is the run's own report (CUDA: max allocated).
Model-FLOPs utilisation uses forward FLOPs per image counted analytically for the full-size models (0.80
TFLOP SD 1.5 @512, 6.8 TFLOP SDXL @1024, scaled by pixel count), or by torch's FLOP counter with --tiny and
for the DiTs (their transformer's own config on the meta device);
a LoRA step costs ~2 forwards (3 with gradient checkpointing), a full fine-tune ~3 (4).
`--features` runs each row again with one speed feature flipped: off where the row has it on, else on.
`--processes 1,2` runs each row data-parallel at each process count (through `accelerate launch`, as the
studio launches: engine.launch), the same batch per process, and reports the scaling efficiency
throughput_N / (N x throughput_1). On a CPU (gloo, processes sharing its cores) that is only a sanity check.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FORWARD_TFLOP = {"sd15": (0.80, 512), "sdxl": (6.8, 1024)}  # per image at the reference resolution
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}  # dense
TARGETS = {"sdxl-lora-1024": ("images_per_s", ">=", 20.0), "sd15-lora-512": ("images_per_s", ">=", 150.0),
           "sdxl-lora-1024-b1-minmem": ("peak_memory_gb", "<=", 10.0),
           # Flux.1 dev LoRA against the GPU sizes its presets are for (max allocated; the card also holds the
           # CUDA context, ~0.5 GB)
           "flux1-lora-1024-b1": ("peak_memory_gb", "<=", 24.0), "flux1-lora-1024-b1-16gb": ("peak_memory_gb", "<=", 16.0),
           "flux1-lora-1024-b1-12gb": ("peak_memory_gb", "<=", 12.0)}
TINY_MODELS = {"sd15": "tiny-sd", "sdxl": "tiny-sdxl", "flux1": "tiny-flux", "sd35": "tiny-sd3"}
# the DiT rows train as the presets do: gradient checkpointing, both caches (T5 and the VAE leave the GPU)
DIT = dict(gradient_checkpointing=True, cache_latents=True, cache_text_encoder_outputs=True)
QLORA = dict(DIT, quantize_base="nf4", optimizer="adamw8bit")


@dataclass
class Row:
    name: str
    model: str  # sd15 | sdxl | flux1 | sd35
    resolution: int
    batch: int
    method: str = "lora"
    settings: dict = field(default_factory=dict)
    needs_cuda: str = ""  # what needs it


ROWS = [
    Row("sd15-lora-512-b1", "sd15", 512, 1),
    Row("sd15-lora-512-b16", "sd15", 512, 16),
    Row("sdxl-lora-1024-b1", "sdxl", 1024, 1),
    Row("sdxl-lora-1024-b8", "sdxl", 1024, 8),
    Row("sdxl-lora-1024-b1-minmem", "sdxl", 1024, 1, needs_cuda="8-bit Adam",
        settings=dict(gradient_checkpointing=True, cache_latents=True, cache_text_encoder_outputs=True,
                      optimizer="adamw8bit")),
    Row("sdxl-full-1024-b1", "sdxl", 1024, 1, method="full"),
    # full-size DiTs with random weights made on the GPU (builtin:random-flux1, builtin:random-sd35)
    Row("flux1-lora-1024-b1", "flux1", 1024, 1, settings=DIT),  # bf16: the 24 GB preset
    Row("flux1-lora-1024-b1-16gb", "flux1", 1024, 1, needs_cuda="NF4 base, 8-bit Adam", settings=QLORA),
    Row("flux1-lora-1024-b1-12gb", "flux1", 1024, 1, needs_cuda="NF4 base, 8-bit Adam",
        settings=dict(QLORA, blocks_to_swap=32)),  # the 12 GB preset
    Row("sd35-lora-1024-b1", "sd35", 1024, 1, settings=DIT),  # SD3.5 Large, bf16
]
# Each speed feature as (settings with it on, settings with it off); --features flips it against the row.
FEATURES = {
    "bf16": ({"mixed_precision": "bf16"}, {"mixed_precision": "no"}),
    "cache_latents": ({"cache_latents": True}, {"cache_latents": False}),
    "cache_text_encoder_outputs": ({"cache_text_encoder_outputs": True}, {"cache_text_encoder_outputs": False}),
    "sdpa": ({"attention": "sdpa"}, {"attention": "eager"}),
    "channels_last": ({"channels_last": True}, {"channels_last": False}),
    "fused_adamw": ({"fused_adamw": True}, {"fused_adamw": False}),
    "torch_compile": ({"torch_compile": True}, {"torch_compile": False}),
    "logging_steps=10": ({"logging_steps": 10}, {"logging_steps": 1}),  # 1 host sync per 10 steps, not per step
    "workers": ({"dataloader_num_workers": 4}, {"dataloader_num_workers": 0}),  # pinned memory on CUDA
    "enable_bucket": ({"enable_bucket": True}, {"enable_bucket": False}),
}
# On a CPU, compiling the UNet's C++ kernels takes many minutes: not a useful measurement there.
CUDA_ONLY_FEATURES = {"torch_compile": "compiling on a CPU takes many minutes; measure it on CUDA"}


def synthetic_images(folder: Path, n: int, size: int) -> Path:
    """n random JPEGs with captions: decoding cost like real photos, content irrelevant to speed."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 255, (size // 16, size // 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(folder / f"{i}.jpg", quality=90)
        (folder / f"{i}.txt").write_text(f"a photo of thing number {i}, detailed, studio lighting")
    return folder


def forward_tflop(row: Row, tiny: bool, model_id: str, resolution: int) -> float:
    if row.model in ("flux1", "sd35"):
        return dit_forward_tflop(model_id, resolution)
    if not tiny:
        tflop, ref = FORWARD_TFLOP[row.model]
        return tflop * (resolution / ref) ** 2
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from engine.builtin import resolve_builtin

    unet = UNet2DConditionModel.from_pretrained(resolve_builtin(model_id), subfolder="unet")
    lat = resolution // 8
    x = torch.randn(1, 4, lat, lat)
    hidden = torch.randn(1, 77, unet.config.cross_attention_dim)
    kwargs = {}
    if unet.config.addition_embed_type == "text_time":
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled), "time_ids": torch.randn(1, 6)}
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, torch.tensor([500]), hidden, **kwargs)
    return counter.get_total_flops() / 1e12


def dit_forward_tflop(model_id: str, resolution: int) -> float:
    """One image's transformer forward at this resolution, counted by torch's FLOP counter on the model's own
    config built on the meta device (no weights, a few seconds on a CPU): Flux.1 dev at 1024 px is 74.4 TFLOP
    (4096 image + 512 T5 tokens), SD3.5 Large 31.1 (4096 + 77 CLIP + 256 T5)."""
    import json as json_

    import diffusers
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from engine.builtin import resolve_builtin

    folder = resolve_builtin(model_id)
    index = json_.loads((folder / "model_index.json").read_text())
    cls = getattr(diffusers, index["transformer"][1])
    t5 = "tokenizer_2" if "text_encoder_3" not in index else "tokenizer_3"
    text = json_.loads((folder / t5 / "tokenizer_config.json").read_text())["model_max_length"]
    lat, b, dt = resolution // 8, 1, torch.bfloat16
    with torch.device("meta"):
        m = cls.from_config(cls.load_config(folder, subfolder="transformer")).to(dt)
        c = m.config
        if index["_class_name"].startswith("Flux"):
            tokens = (lat // 2) ** 2
            kwargs = dict(hidden_states=torch.randn(b, tokens, c.in_channels, dtype=dt), img_ids=torch.zeros(tokens, 3),
                          txt_ids=torch.zeros(text, 3), guidance=torch.ones(b) if c.guidance_embeds else None,
                          timestep=torch.full((b,), 0.5))
        else:  # SD3: the CLIPs' 77 tokens, then T5's
            kwargs = dict(hidden_states=torch.randn(b, c.in_channels, lat, lat, dtype=dt), timestep=torch.full((b,), 500.0))
            text += 77
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m(encoder_hidden_states=torch.randn(b, text, c.joint_attention_dim, dtype=dt),
              pooled_projections=torch.randn(b, c.pooled_projection_dim, dtype=dt), return_dict=False, **kwargs)
    return counter.get_total_flops() / 1e12


def peak_tflops(device: str, given: float | None) -> float | None:
    if given or device != "cuda":
        return given
    import torch
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def row_config(row: Row, args, workdir: Path) -> dict:
    """The row's engine settings (before any feature flip)."""
    model = TINY_MODELS[row.model] if args.tiny else f"random-{row.model}"
    resolution = 64 if args.tiny else row.resolution
    # min_bucket_reso: the default (256) would be above --tiny's 64 px, which bucketing refuses
    return {"pretrained_model_name_or_path": f"builtin:{model}", "method": row.method,
            "train_data_dir": str(workdir / f"data-{resolution}-{_n_images(row, args)}"), "resolution": resolution,
            "train_batch_size": row.batch, "max_train_steps": args.warmup + args.steps, "rank": args.rank,
            "lora_alpha": args.rank, "mixed_precision": "bf16" if args.device == "cuda" else "no",
            "report_to": "none", "output_dir": str(workdir / "runs"), "adaptor_name": "bench", "overwrite": True,
            "lr_warmup_steps": 0, "seed": 0, "min_bucket_reso": min(256, resolution), **row.settings}


def _n_images(row: Row, args) -> int:
    return max(args.images, 2 * row.batch)  # at least two full batches


def flip(feature: str, cfg: dict) -> tuple[str, dict]:
    """(label, settings) that turn the feature off if cfg has it on (its settings or the engine's defaults
    say so), else on."""
    from engine.config import FIELD_BY_NAME

    on, off = FEATURES[feature]
    is_on = all(cfg.get(k, FIELD_BY_NAME[k].default) == v for k, v in on.items())
    return (f"{feature}: off", off) if is_on else (f"{feature}: on", on)


def _train_command(cfg: dict, processes: int | None) -> list[str]:
    """`python -m engine.train --set ...`; with a process count, under `accelerate launch` as the studio starts it."""
    sets = [x for k, v in cfg.items() for x in ("--set", f"{k}={json.dumps(v) if isinstance(v, bool) else v}")]
    if processes is None:
        return [sys.executable, "-m", "engine.train", *sets]
    from engine.config import validate
    from engine.launch import LAUNCHER, launch_flags
    return [*LAUNCHER, *launch_flags(validate(cfg)), "-m", "engine.train", *sets]


def run_row(row: Row, args, settings: dict, workdir: Path, skip: str = "", processes: int | None = None) -> dict:
    cfg = {**row_config(row, args, workdir), **settings}
    if processes is not None:
        cfg["num_processes"] = processes
    resolution = cfg["resolution"]
    result = {"row": row.name, "model": cfg["pretrained_model_name_or_path"], "resolution": resolution,
              "batch": row.batch, "method": row.method, "device": args.device, "settings": settings,
              "processes": processes or 1}
    if row.needs_cuda and args.device != "cuda":
        skip = skip or f"needs CUDA ({row.needs_cuda})"
    if skip:
        return {**result, "skipped": skip}
    synthetic_images(Path(cfg["train_data_dir"]), _n_images(row, args), resolution)
    cmd = _train_command(cfg, processes)
    # ahead of, not instead of, the caller's path (bench/gpu_check.sh puts the carried wheels there)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {**result, "error": f"timed out after {args.timeout} s (--timeout)"}
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or [f"exit {proc.returncode}"]
        # the engine's own message, not the hint line after it
        return {**result, "error": next((x for x in reversed(lines) if x.startswith("error:")), lines[-1])[:300]}
    events = [json.loads(line) for line in (workdir / "runs" / "bench" / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["type"] == "step" and e["step"] >= args.warmup]
    if len(steps) < 2:  # a time needs two step events after the warm-up
        return {**result, "skipped": f"only {len(steps)} step event(s) after the warm-up: raise --steps above "
                                     f"2 x logging_steps ({cfg.get('logging_steps', 1)})"}
    first, last = steps[0], steps[-1]
    seconds = last["time"] - first["time"]
    # a step trains a batch on every process
    images_per_s = (last["step"] - first["step"]) * row.batch * (processes or 1) / seconds if seconds > 0 else float("nan")
    passes = (3 if row.method == "full" else 2) + (1 if cfg.get("gradient_checkpointing") else 0)
    fwd = forward_tflop(row, args.tiny, cfg["pretrained_model_name_or_path"], resolution)
    peak = peak_tflops(args.device, args.peak_tflops)
    return {**result, "images_per_s": round(images_per_s, 3),
            "s_per_it": round(row.batch * (processes or 1) / images_per_s, 4),
            "peak_memory_gb": round(last["peak_memory_mb"] / 1024, 3), "forward_tflop_per_image": fwd,
            "mfu": round(images_per_s * fwd * passes / peak, 4) if peak else None, "peak_tflops": peak}


def target_of(row_name: str) -> str | None:
    """The TARGETS key a row is judged by: the longest matching prefix (the min-memory row has its own)."""
    matching = [prefix for prefix in TARGETS if row_name.startswith(prefix)]
    return max(matching, key=len) if matching else None


def _meets(value: float, op: str, goal: float) -> bool:
    return value >= goal if op == ">=" else value <= goal


def target_verdict(r: dict) -> str:
    prefix = target_of(r["row"])
    if prefix is None or TARGETS[prefix][0] not in r:
        return ""
    key, op, goal = TARGETS[prefix]
    return f"target {key} {op} {goal:g}: {'met' if _meets(r[key], op, goal) else 'not met by this row'}"


def best_verdicts(results: list[dict]) -> list[dict]:
    """Each target judged on its best measured row and setting ("at the best batch size")."""
    out = []
    for prefix, (key, op, goal) in TARGETS.items():
        rows = [r for r in results if target_of(r["row"]) == prefix and key in r]
        if not rows:
            continue
        best = (max if op == ">=" else min)(rows, key=lambda r: r[key])
        out.append({"target": f"{prefix} {key} {op} {goal:g}", "best_row": best["row"],
                    "best_setting": best["feature"], "value": best[key],
                    "verdict": "met" if _meets(best[key], op, goal) else "MISSED"})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default=None)
    p.add_argument("--tiny", action="store_true", help="tiny built-in models at 64px (CPU-sized)")
    p.add_argument("--rows", help="comma-separated row names (default: all)")
    p.add_argument("--features", nargs="?", const=",".join(FEATURES), default="",
                   help=f"also run each row with each of these speed features flipped (default: all of "
                        f"{', '.join(FEATURES)})")
    p.add_argument("--processes", help="comma-separated process counts, e.g. 1,2: data-parallel scaling (the "
                                       "first is the baseline)")
    p.add_argument("--steps", type=int, default=20, help="measured steps after warm-up")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--images", type=int, default=32, help="synthetic images per resolution")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, if not detected")
    p.add_argument("--timeout", type=int, default=3600)
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    args = p.parse_args(argv)
    if args.device is None:
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = ROWS if not args.rows else [r for r in ROWS if r.name in args.rows.split(",")]
    if not rows:
        p.error(f"no such rows; choose from {', '.join(r.name for r in ROWS)}")
    features = [f for f in args.features.split(",") if f]
    if set(features) - set(FEATURES):
        p.error(f"no such features: {', '.join(set(features) - set(FEATURES))}; choose from {', '.join(FEATURES)}")
    try:
        counts = [int(n) for n in args.processes.split(",")] if args.processes else []
    except ValueError:
        counts = [0]
    if any(n < 1 for n in counts):
        p.error(f"--processes {args.processes}: give process counts, e.g. 1,2")
    judged_rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        for row in rows:
            if counts:
                for r in scaling(row, args, counts, Path(tmp)):
                    print(json.dumps(r) if args.json else _line(r), flush=True)
                continue
            cfg = row_config(row, args, Path(tmp))
            variants = [("", {}, "")] + [(*flip(f, cfg), CUDA_ONLY_FEATURES.get(f, "") if args.device != "cuda"
                                          else "") for f in features]
            for label, settings, skip in variants:
                r = run_row(row, args, settings, Path(tmp), skip)
                r["feature"] = label or "row settings"
                # the targets are for full-size models on a GPU; tiny or CPU figures are not judged
                judged = not label and not args.tiny and args.device == "cuda"
                r["verdict"] = target_verdict(r) if judged else ""
                judged_rows += [r] if judged else []
                print(json.dumps(r) if args.json else _line(r), flush=True)
    for v in best_verdicts(judged_rows):  # only on a GPU with the full-size models
        print(json.dumps(v) if args.json else
              f"{v['target']}: best {v['value']:g} ({v['best_row']}, {v['best_setting']}): {v['verdict']}")
    return 0


def scaling(row: Row, args, counts: list[int], workdir: Path) -> list[dict]:
    """The row at each process count; efficiency against the first count's throughput per process."""
    results = [{**run_row(row, args, {}, workdir, processes=n), "feature": f"processes={n}", "verdict": ""}
               for n in counts]
    base = results[0]
    for r in results:
        if "images_per_s" in r and "images_per_s" in base:
            per_base = base["images_per_s"] / base["processes"]
            r["scaling_efficiency"] = round(r["images_per_s"] / (r["processes"] * per_base), 3)
    return results


def _line(r: dict) -> str:
    head = f"{r['row']:<26} {r['feature']:<36}"
    if "skipped" in r or "error" in r:
        return f"{head} {'skipped: ' + r['skipped'] if 'skipped' in r else 'error: ' + r['error']}"
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    scaling_ = f"  scaling efficiency {100 * r['scaling_efficiency']:.0f}%" if "scaling_efficiency" in r else ""
    return (f"{head} {r['images_per_s']:>9.2f} img/s  {r['s_per_it']:.3f} s/it  peak {r['peak_memory_gb']:.2f} GB"
            f"  MFU {mfu}{scaling_}  {r['verdict']}")


if __name__ == "__main__":
    sys.exit(main())
