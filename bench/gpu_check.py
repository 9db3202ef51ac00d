"""The stages of bench/gpu_check.sh (run that script, not this module): each a subcommand that writes JSON.

    python -m bench.gpu_check install-wheels DIR --site SITE --report FILE   (stdlib only: runs before installs)
    python -m bench.gpu_check env --mode gpu|cpu --report FILE
    python -m bench.gpu_check build --mode gpu|cpu --report FILE
    python -m bench.gpu_check paths --mode gpu|cpu --work DIR --report FILE.jsonl [--only a,b]
    python -m bench.gpu_check report --mode gpu|cpu --work DIR --out DIR

The stages that run training read GPU_CHECK_DEADLINE (seconds since the epoch): a path starts only when the
time left covers its `min_s`, and none runs past the deadline. Every module-level import is from the standard
library, so `install-wheels` runs on a machine that has none of our packages yet.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from bench.gpu_check_report import markdown, write_report  # noqa: F401 (markdown: the tests')
from bench.gpu_check_wheels import cmd_install_wheels, installed_version, select_wheels  # noqa: F401 (the tests)

ROOT = Path(__file__).resolve().parent.parent
# What a run on a GPU machine has to import (the distributions, as pip names them); the env stage reports
# each one's version and where it was imported from.
STACK = ["torch", "numpy", "pillow", "diffusers", "transformers", "peft", "accelerate", "safetensors", "tokenizers",
         "huggingface-hub", "bitsandbytes", "tomli-w", "httpx2", "pyyaml", "regex", "psutil", "typing-extensions"]
MINMEM_TARGET_GB = 10.0


# ---------------------------------------------------------------- environment

def _run_text(cmd: list[str], timeout: int = 30) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"({cmd[0]}: {e})"


def sdpa_kernels() -> dict:
    """Which of PyTorch's SDPA kernels run the attention shapes of SD 1.5 (head dims 40/80/160) and SDXL (64),
    forward and backward, in bf16 and fp16."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = {}
    for backend in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        be = getattr(SDPBackend, backend, None)
        if be is None:
            out[backend.lower()] = "not in this torch"
            continue
        fails = []
        for dtype in (torch.bfloat16, torch.float16):
            for head_dim in (40, 64, 80, 160):
                q, k, v = (torch.randn(2, 8, 1024, head_dim, device="cuda", dtype=dtype, requires_grad=True)
                           for _ in range(3))
                try:
                    with sdpa_kernel([be]):
                        F.scaled_dot_product_attention(q, k, v).sum().backward()
                    torch.cuda.synchronize()
                except Exception as e:  # noqa: BLE001 - a kernel that refuses a shape is the finding
                    fails.append(f"{str(dtype)[6:]}/d{head_dim}: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
        out[backend.lower()] = "ok" if not fails else "; ".join(fails[:3])
    return out


def cmd_env(args) -> int:
    import importlib
    import importlib.metadata as md
    import platform

    env: dict = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
                 "cpus": os.cpu_count(), "pythonpath": os.environ.get("PYTHONPATH", "")}
    print(f"python {env['python']} ({sys.executable}) on {env['platform']}, {env['cpus']} CPUs")
    smi = shutil.which("nvidia-smi")
    env["nvidia_smi"] = _run_text([smi]) if smi else "nvidia-smi: not found"
    print(env["nvidia_smi"])
    packages = {}
    for dist in STACK:
        version = installed_version(dist)
        where = ""
        if version:
            try:
                files = md.distribution(dist).locate_file("")
                where = str(files)
            except Exception:  # noqa: BLE001
                pass
        packages[dist] = {"version": version, "location": where}
        print(f"  {dist:<18} {version or 'MISSING':<16} {where}")
    env["packages"] = packages
    try:
        import torch
        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        env["cuda_available"] = torch.cuda.is_available()
        if env["cuda_available"]:
            props = torch.cuda.get_device_properties(0)
            env.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                       gpu_memory_gb=round(props.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported())
        print(f"torch {env['torch']} (CUDA {env['torch_cuda']}, cuDNN {env['cudnn']}); CUDA available: "
              f"{env['cuda_available']}" + (f"; {env['gpu']} sm_{env['capability']}, {env['gpu_memory_gb']} GB, "
                                            f"bf16 {env['bf16']}" if env["cuda_available"] else ""))
    except Exception as e:  # noqa: BLE001
        env["torch_error"] = f"{type(e).__name__}: {e}"
        print("torch:", env["torch_error"])
    for mod in ("diffusers", "transformers", "peft", "accelerate"):  # imported as the engine will
        try:
            importlib.import_module(mod)
        except Exception as e:  # noqa: BLE001
            env.setdefault("import_errors", {})[mod] = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"import {mod}: {env['import_errors'][mod]}")
    if args.mode == "gpu" and env.get("cuda_available"):
        try:
            import bitsandbytes as bnb
            libs = sorted(p.name for p in Path(bnb.__file__).parent.glob("libbitsandbytes_*.so"))
            env["bitsandbytes"] = {"version": bnb.__version__, "libs": libs}
        except Exception as e:  # noqa: BLE001
            env["bitsandbytes"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print("bitsandbytes:", env["bitsandbytes"])
        try:
            env["sdpa_kernels"] = sdpa_kernels()
        except Exception as e:  # noqa: BLE001
            env["sdpa_kernels"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        print("SDPA kernels:", env["sdpa_kernels"])
    Path(args.report).write_text(json.dumps(env, indent=1))
    return 0 if "torch_error" not in env and "import_errors" not in env else 1


# ---------------------------------------------------------------- building the models

def safetensors_params(folder: Path) -> int:
    """Parameters stored in a folder's .safetensors files, from their headers (nothing is loaded)."""
    total = 0
    for f in folder.rglob("*.safetensors"):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def cmd_build(args) -> int:
    import torch

    from engine.builtin import BUILTINS, _is_complete, resolve_builtin
    from engine.paths import cache_root

    names = ["random-sd15", "random-sdxl"] if args.mode == "gpu" else ["tiny-sd", "tiny-sdxl"]
    on_gpu = args.mode == "gpu" and torch.cuda.is_available()
    if args.mode == "gpu" and not on_gpu:  # building GBs of weights on a CPU would only run out the clock
        print("build: torch sees no CUDA device (see the env stage); nothing built")
        Path(args.report).write_text(json.dumps([{"model": f"builtin:{n}", "result": "FAIL", "seconds": 0,
                                                  "error": "no CUDA device"} for n in names]))
        return 1
    rows, failed = [], False
    for short in names:
        assert short in BUILTINS
        folder = cache_root() / "builtin" / short
        row = {"model": f"builtin:{short}", "device": "cuda" if on_gpu else "cpu"}
        t0 = time.time()
        try:
            if _is_complete(folder, short):
                row["built"] = "reused from the cache"
            elif on_gpu:
                torch.cuda.reset_peak_memory_stats()
                try:
                    with torch.device("cuda"):  # module init (the slow part on a CPU) runs on the GPU
                        resolve_builtin(f"builtin:{short}")
                    row["built"] = "on the GPU"
                    row["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                except Exception as e:  # noqa: BLE001 - the CPU build still lets the paths run
                    row["gpu_build_error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    failed = True
                    print(f"build {short} on the GPU failed ({row['gpu_build_error']}); building on the CPU")
                    resolve_builtin(f"builtin:{short}")
                    row["built"] = "on the CPU (the GPU build failed)"
                    row["device"] = "cpu"
            else:
                resolve_builtin(f"builtin:{short}")
                row["built"] = "on the CPU"
            row["seconds"] = round(time.time() - t0, 1)
            row["params"] = {p.name: safetensors_params(p) for p in sorted(folder.iterdir()) if p.is_dir()}
            row["params_total"] = sum(row["params"].values())
            row["disk_gb"] = round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e9, 2)
            row["result"] = "ok"
        except Exception as e:  # noqa: BLE001
            row.update(result="FAIL", error=f"{type(e).__name__}: {str(e)[:500]}", seconds=round(time.time() - t0, 1))
            failed = True
        print(f"build {row['model']}: {row['result']} {row.get('built', '')} in {row['seconds']} s, "
              f"{row.get('params_total', 0) / 1e6:.1f} M params, {row.get('disk_gb', '?')} GB on disk "
              f"{row.get('error', '')}")
        rows.append(row)
    Path(args.report).write_text(json.dumps(rows, indent=1))
    return 1 if failed else 0


# ---------------------------------------------------------------- training paths

@dataclass
class CheckPath:
    name: str
    model: str  # sd15 | sdxl
    what: str
    settings: dict = field(default_factory=dict)
    cuda_only: str = ""  # why it cannot run without CUDA
    timeout_s: int = 150
    min_s: int = 25  # start only if this much time is left before the deadline
    steps: int = 6  # on a GPU; 2 on a CPU
    batch: int | None = None  # None: 4 for sd15, 1 for sdxl (2 and 1 on a CPU)


def _minmem_settings() -> dict:
    from bench.train_speed import ROWS
    (row,) = [r for r in ROWS if r.name == "sdxl-lora-1024-b1-minmem"]
    return dict(row.settings)


def check_paths() -> list[CheckPath]:
    no_fp16 = "fp16 needs CUDA (the engine refuses it on a CPU)"
    # in order of priority: when time runs short, the last ones are skipped
    return [
        CheckPath("sd15-bf16-sdpa", "sd15", "bf16 autocast, SDPA attention (the GPU default)",
                  {"mixed_precision": "bf16", "attention": "sdpa"}),
        CheckPath("sd15-fp16-gradscaler", "sd15", "fp16 with the grad scaler, fp32 LoRA weights",
                  {"mixed_precision": "fp16"}, no_fp16),
        CheckPath("sd15-adamw8bit", "sd15", "8-bit AdamW (bitsandbytes)", {"optimizer": "adamw8bit"},
                  "bitsandbytes' 8-bit AdamW needs CUDA"),
        CheckPath("sdxl-fp16-vae-fp32", "sdxl", "SDXL LoRA in fp16 (the VAE kept in fp32), one validation image",
                  {"mixed_precision": "fp16", "validation_prompt": "a photo of a cat", "num_validation_images": 1,
                   "num_inference_steps": 4}, no_fp16, min_s=40),
        CheckPath("sdxl-minmem", "sdxl", "bench's minimum-memory SDXL row (target: peak <= "
                  f"{MINMEM_TARGET_GB:g} GB)", {"mixed_precision": "bf16", **_minmem_settings()},
                  "its 8-bit AdamW needs CUDA", min_s=35),
        CheckPath("sd15-full-fp16-ema-offload", "sd15", "full fine-tune in fp16 (grad scaler), EMA offloaded to "
                  "the CPU", {"method": "full", "mixed_precision": "fp16", "use_ema": True, "offload_ema": True},
                  no_fp16, batch=2, min_s=40),
        CheckPath("sd15-workers-pinned", "sd15", "2 dataloader workers, pinned batches on CUDA",
                  {"dataloader_num_workers": 2}),
        CheckPath("sd15-gradckpt-te", "sd15", "gradient checkpointing, text-encoder LoRA too",
                  {"gradient_checkpointing": True, "train_text_encoder": True}),
        CheckPath("sd15-caches-validation", "sd15", "latent + text-encoder caches (VAE, encoders off the GPU), "
                  "one validation image (moved back for it)",
                  {"cache_latents": True, "cache_text_encoder_outputs": True, "validation_prompt": "a photo of a cat",
                   "num_validation_images": 1, "num_inference_steps": 4}),
        CheckPath("sd15-eager-attention", "sd15", "attention = eager (the comparison for SDPA)",
                  {"mixed_precision": "bf16", "attention": "eager"}),
        CheckPath("sd15-fp32-tf32", "sd15", "no autocast, TF32 matmuls", {"mixed_precision": "no", "allow_tf32": True}),
        CheckPath("sd15-channels-last", "sd15", "UNet in channels_last", {"channels_last": True}),
        CheckPath("sdxl-bf16", "sdxl", "SDXL LoRA, bf16", {"mixed_precision": "bf16"}, min_s=35),
        CheckPath("sd15-torch-compile", "sd15", "torch_compile (the UNet; first step compiles)",
                  {"torch_compile": True}, "compiling on a CPU takes many minutes", timeout_s=240, min_s=120, steps=8),
    ]


def _deadline() -> float:
    return float(os.environ.get("GPU_CHECK_DEADLINE") or time.time() + 3600)


def _child_env(mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if mode == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


_CHILDREN: set[int] = set()  # process groups of running trainings, ended with us on SIGTERM (the stage timeout)


def _end_children(signum, frame):
    for pgid in list(_CHILDREN):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    sys.exit(128 + signum)


def run_logged(cmd: list[str], env: dict, timeout: float, tail_lines: int = 30) -> tuple[int | None, list[str]]:
    """Run cmd in its own process group, echoing its output; on timeout kill the whole group (dataloader and
    compile workers too). Returns (exit code or None on timeout, the last lines)."""
    tail: deque[str] = deque(maxlen=tail_lines)
    signal.signal(signal.SIGTERM, _end_children)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    _CHILDREN.add(proc.pid)

    def pump():
        for line in proc.stdout:
            sys.stdout.write("    | " + line)
            tail.append(line.rstrip())
        sys.stdout.flush()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = None
    finally:
        _CHILDREN.discard(proc.pid)
    reader.join(timeout=10)
    return rc, list(tail)


def read_events(path: Path) -> list[dict]:
    out = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a partial last line
                pass
    return out


def lora_file_check(path: Path) -> str:
    """The kohya file: every tensor finite, and the up weights (zero at the start) moved."""
    import torch
    from safetensors.torch import load_file

    sd = load_file(str(path))
    if not all(torch.isfinite(t.float()).all() for t in sd.values()):
        return "adaptor has non-finite weights"
    ups = [t for k, t in sd.items() if "lora_up" in k]
    moved = sum(bool(t.abs().max() > 0) for t in ups)
    return f"adaptor finite, {moved}/{len(ups)} up weights moved"


def sample_check(events: list[dict]) -> str:
    """The first validation image's pixel statistics: a flat image (std ~0, often black) is what NaN latents
    decode to (e.g. SDXL's VAE overflowing in fp16; random weights may not show it)."""
    paths = [e["path"] for e in events if e.get("type") == "sample"]
    if not paths:
        return ""
    try:
        import numpy as np
        from PIL import Image
        px = np.asarray(Image.open(paths[0]).convert("RGB"), dtype=np.float32)
    except Exception as e:  # noqa: BLE001
        return f" (unreadable: {type(e).__name__})"
    return f" (mean {px.mean():.0f}, std {px.std():.0f}{', FLAT: NaN?' if px.std() < 1 else ''})"


def summarize(p: CheckPath, events: list[dict], warmup: int, batch: int) -> dict:
    steps = [e for e in events if e.get("type") == "step"]
    losses = [e["loss"] for e in steps]
    measured = [e for e in steps if e["step"] >= warmup]
    out: dict = {"steps": len(steps)}
    if losses:
        out["loss"] = losses[-1]
        out["loss_finite"] = all(isinstance(x, (int, float)) and math.isfinite(x) for x in losses)
        out["peak_gb"] = round(max(e.get("peak_memory_mb", 0) for e in steps) / 1024, 3)
    if len(measured) >= 2 and measured[-1]["time"] > measured[0]["time"]:
        rate = (measured[-1]["step"] - measured[0]["step"]) / (measured[-1]["time"] - measured[0]["time"])
        out["it_per_s"] = round(rate, 3)
        out["images_per_s"] = round(rate * batch, 2)
    done = [e for e in events if e.get("type") == "done"]
    if done:
        out["optimizer_steps"] = done[-1].get("optimizer_steps")
    errors = [e for e in events if e.get("type") == "error"]
    if errors:
        out["error"] = errors[-1].get("message", "")[:500]
    out["samples"] = sum(e.get("type") == "sample" for e in events)
    return out


def path_config(p: CheckPath, mode: str, work: Path) -> dict:
    """The engine settings of a path: full size on a GPU, the tiny models at 64 px on a CPU."""
    gpu = mode == "gpu"
    model = {"sd15": "random-sd15", "sdxl": "random-sdxl"}[p.model] if gpu else \
        {"sd15": "tiny-sd", "sdxl": "tiny-sdxl"}[p.model]
    resolution = ({"sd15": 512, "sdxl": 1024}[p.model]) if gpu else 64
    batch = p.batch or ({"sd15": 4, "sdxl": 1}[p.model] if gpu else {"sd15": 2, "sdxl": 1}[p.model])
    return {"pretrained_model_name_or_path": f"builtin:{model}", "train_data_dir": str(work / f"data-{resolution}"),
            "resolution": resolution, "train_batch_size": batch, "max_train_steps": p.steps if gpu else 2,
            "rank": 16, "lora_alpha": 16, "learning_rate": 1e-4, "lr_warmup_steps": 0, "seed": 0,
            "mixed_precision": "bf16" if gpu else "no", "report_to": "none", "output_dir": str(work / "runs"),
            "adaptor_name": p.name, "overwrite": True, "min_bucket_reso": min(256, resolution), **p.settings}


def set_args(cfg: dict) -> list[str]:
    """`--set key=value` pairs for engine.train (booleans as JSON, as the config reader takes them)."""
    out = []
    for k, v in cfg.items():
        out += ["--set", f"{k}={json.dumps(v) if isinstance(v, bool) else v}"]
    return out


def run_path(p: CheckPath, mode: str, work: Path, deadline: float) -> dict:
    gpu = mode == "gpu"
    row = {"path": p.name, "model": p.model, "what": p.what, "settings": p.settings}
    if not gpu and p.cuda_only:
        return {**row, "result": "skipped (no CUDA)", "note": p.cuda_only}
    left = deadline - time.time()
    if left < p.min_s:
        return {**row, "result": "skipped (time budget)", "note": f"{left:.0f} s left, needs ~{p.min_s} s"}
    from bench.train_speed import synthetic_images

    cfg = path_config(p, mode, work)
    resolution, batch, steps = cfg["resolution"], cfg["train_batch_size"], cfg["max_train_steps"]
    warmup = 2 if gpu else 1
    data = Path(cfg["train_data_dir"])
    if not data.is_dir():
        synthetic_images(data, 8, resolution)
    cmd = [sys.executable, "-m", "engine.train", *set_args(cfg)]
    row.update(settings=cfg, batch=batch, resolution=resolution)
    print(f"--- {p.name}: {p.what}", flush=True)
    t0 = time.time()
    rc, tail = run_logged(cmd, _child_env(mode), min(p.timeout_s, deadline - time.time()))
    row["seconds"] = round(time.time() - t0, 1)
    run_dir = work / "runs" / p.name
    row.update(summarize(p, read_events(run_dir / "events.jsonl"), warmup, batch))
    notes = []
    if rc is None:
        row["result"] = "FAIL (timeout)"
        notes.append(f"killed after {row['seconds']:.0f} s")
    elif rc != 0 or not row["steps"] or not row.get("loss_finite"):
        row["result"] = "FAIL"
        notes.append(row.get("error") or (tail[-1] if tail else f"exit code {rc}"))
    else:
        row["result"] = "ok"
    if row["result"] != "ok":
        row["error_tail"] = tail[-15:]
    if row.get("optimizer_steps") is not None:
        notes.append(f"{row['optimizer_steps']}/{steps} optimizer steps")
    kohya = run_dir / f"{p.name}.safetensors"
    if row["result"] == "ok" and cfg.get("method", "lora") == "lora" and kohya.is_file():
        try:
            notes.append(lora_file_check(kohya))
        except Exception as e:  # noqa: BLE001
            notes.append(f"adaptor unreadable: {type(e).__name__}: {e}")
    if p.settings.get("validation_prompt"):
        notes.append(f"{row['samples']} sample image(s)" + sample_check(read_events(run_dir / "events.jsonl")))
    if p.name == "sdxl-minmem" and "peak_gb" in row:
        notes.append(f"peak <= {MINMEM_TARGET_GB:g} GB: {'met' if row['peak_gb'] <= MINMEM_TARGET_GB else 'MISSED'}")
    row["note"] = "; ".join(str(n) for n in notes)
    shutil.rmtree(run_dir, ignore_errors=True)  # full fine-tunes write GBs; the events were read
    print(f"--- {p.name}: {row['result']} in {row['seconds']} s  loss {row.get('loss')}  peak "
          f"{row.get('peak_gb')} GB  {row.get('it_per_s')} it/s  {row['note']}", flush=True)
    return row


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def cmd_paths(args) -> int:
    paths = check_paths()
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - {p.name for p in paths}
        if unknown:
            print(f"unknown paths {sorted(unknown)}; choose from {', '.join(p.name for p in paths)}", file=sys.stderr)
            return 2
    else:
        wanted = [p.name for p in paths]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    deadline = _deadline()
    no_gpu = args.mode == "gpu" and not _cuda_available()
    with open(args.report, "a") as report:
        for p in paths:
            try:
                if no_gpu:  # full-size models on a CPU would only run out the clock
                    row = {"path": p.name, "model": p.model, "what": p.what, "result": "FAIL",
                           "note": "torch sees no CUDA device here (see the env stage); use --cpu-smoke on a CPU"}
                elif p.name not in wanted and not (args.mode == "cpu" and p.cuda_only):
                    row = {"path": p.name, "model": p.model, "what": p.what, "result": "skipped (not in --only)"}
                else:
                    row = run_path(p, args.mode, work, deadline)
            except Exception as e:  # noqa: BLE001 - the harness itself broke on this path: record and go on
                row = {"path": p.name, "model": p.model, "what": p.what, "result": "FAIL",
                       "note": f"harness: {type(e).__name__}: {e}"}
            report.write(json.dumps(row) + "\n")
            report.flush()
    return 0  # a path's failure is in its row (and the report's exit status), not this stage's


# ---------------------------------------------------------------- report

def cmd_report(args) -> int:
    try:
        listed = check_paths()
    except Exception:  # noqa: BLE001 - bench.train_speed not importable: list what ran
        listed = []
    return write_report(args.mode, Path(args.work), Path(args.out), listed)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("install-wheels")
    w.add_argument("dir")
    w.add_argument("--site", required=True)
    w.add_argument("--report", required=True)
    for name in ("env", "build"):
        s = sub.add_parser(name)
        s.add_argument("--mode", choices=("gpu", "cpu"), required=True)
        s.add_argument("--report", required=True)
    s = sub.add_parser("paths")
    s.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    s.add_argument("--work", required=True)
    s.add_argument("--report", required=True)
    s.add_argument("--only", help="comma-separated path names (default: all)")
    s = sub.add_parser("report")
    s.add_argument("--mode", choices=("gpu", "cpu"), required=True)
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    args = p.parse_args(argv)
    return {"install-wheels": cmd_install_wheels, "env": cmd_env, "build": cmd_build, "paths": cmd_paths,
            "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
