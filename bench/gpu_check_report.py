"""The report stage of bench/gpu_check.sh: the stages' files in the work folder become gpu_check.md (the table for
the note), gpu_check.json (everything, with error tails) and train_speed.json."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


def _fmt(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return out


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return default



def write_report(mode: str, work: Path, out: Path, listed: list) -> int:
    """gpu_check.md/json and train_speed.json in out from the stages' files in work; listed: every CheckPath,
    so a path its stage never reached still has a row. 1 if anything failed."""
    stages = []
    stages_file = work / "stages.tsv"
    if stages_file.is_file():
        for line in stages_file.read_text().splitlines():
            name, status, rc, secs = (line.split("\t") + ["", "", "", ""])[:4]
            tail = (work / f"stage-{name}.log")
            err = (tail.read_text(errors="replace").splitlines()[-12:]
                   if status.startswith("FAIL") and tail.is_file() else [])
            stages.append({"stage": name, "result": status, "rc": rc, "seconds": secs, "error_tail": err})
    env = _read_json(work / "env.json", {})
    wheels = _read_json(work / "wheels.json", {})
    build = _read_json(work / "build.json", [])
    rows = {r["path"]: r for r in _read_jsonl(work / "paths.jsonl")}
    paths = [rows.get(p.name) or {"path": p.name, "model": p.model, "what": p.what, "settings": p.settings,
                                  "result": "not run (its stage stopped first)"} for p in listed]
    paths += [r for name, r in rows.items() if name not in {p.name for p in listed}]
    speed = _read_jsonl(work / "stage-train_speed.log")  # its stdout: one JSON object a line
    started = float(os.environ.get("GPU_CHECK_START") or time.time())
    summary = {"mode": mode, "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
               "elapsed_s": round(time.time() - started, 1), "stages": stages, "env": env, "wheels": wheels,
               "build": build, "paths": paths, "train_speed": speed}
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=1))
    (out / "train_speed.json").write_text(json.dumps(speed, indent=1))
    (out / "gpu_check.md").write_text(markdown(summary))
    print((out / "gpu_check.md").read_text())
    bad = [r for r in paths if not (r["result"] == "ok" or r["result"].startswith("skipped"))]
    bad += [s for s in stages if not s["result"].startswith(("ok", "skipped", "stopped"))]
    return 1 if bad else 0



def markdown(s: dict) -> str:
    env = s["env"]
    gpu = (f"{env.get('gpu')} (sm_{env.get('capability')}, {env.get('gpu_memory_gb')} GB)"
           if env.get("cuda_available") else "no CUDA device")
    lines = [f"# GPU check ({s['mode']}), {s['started']}, {s['elapsed_s']:.0f} s", "",
             f"- device: {gpu}; torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), Python {env.get('python')}"]
    installed = [f"{w['package']} {w['carried']}" for w in s["wheels"].get("wheels", [])
                 if w.get("action") == "installed"]
    if s["wheels"]:
        lines.append(f"- from the carried wheels: {', '.join(installed) or 'none needed'}")
    if env.get("bitsandbytes"):
        lines.append(f"- bitsandbytes: {env['bitsandbytes']}")
    if env.get("sdpa_kernels"):
        lines.append("- SDPA kernels (fwd+bwd, bf16/fp16, head dims 40/64/80/160): "
                     + ", ".join(f"{k}: {v}" for k, v in env["sdpa_kernels"].items()))
    for b in s["build"]:
        lines.append(f"- build {b['model']}: {b['result']}, {b.get('built', '')}, {b.get('seconds')} s, "
                     f"{b.get('params_total', 0) / 1e6:.0f} M params ({', '.join(f'{k} {v / 1e6:.0f} M' for k, v in b.get('params', {}).items())})"
                     + (f"; {b['error']}" if b.get("error") else "")
                     + (f"; GPU build failed: {b['gpu_build_error']}" if b.get("gpu_build_error") else ""))
    lines.append("- stages: " + ", ".join(f"{st['stage']} {st['result']} ({st['seconds']} s)" for st in s["stages"]))
    lines += ["", "| path | result | loss | peak GB | it/s | note |", "| --- | --- | --- | --- | --- | --- |"]
    for r in s["paths"]:
        note = (r.get("note") or "").replace("|", "/")
        lines.append(f"| {r['path']} ({r.get('what', '')}) | {r['result']} | {_fmt(r.get('loss'), '.4f')} | "
                     f"{_fmt(r.get('peak_gb'), '.2f')} | {_fmt(r.get('it_per_s'), '.2f')} | {note} |")
    lines.append("")
    lines.append("peak GB: CUDA max allocated (on a CPU: the process's max RSS); it/s over the steps after the "
                 "first two (one on a CPU).")
    rows = [r for r in s["train_speed"] if "row" in r]
    if rows:
        lines += ["", "## bench/train_speed.py --json", "",
                  "| row | setting | img/s | s/it | peak GB | MFU | verdict |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            verdict = r.get("verdict") or r.get("skipped") or r.get("error") or ""
            lines.append(f"| {r['row']} | {r.get('feature', '')} | {_fmt(r.get('images_per_s'), '.2f')} | "
                         f"{_fmt(r.get('s_per_it'), '.3f')} | {_fmt(r.get('peak_memory_gb'), '.2f')} | "
                         f"{_fmt(r.get('mfu'), '.1%')} | {str(verdict).replace('|', '/')} |")
        for v in (r for r in s["train_speed"] if "target" in r):
            lines.append(f"\n- target {v['target']}: best {v['value']:g} ({v['best_row']}): {v['verdict']}")
    failed = [r for r in s["paths"] if r.get("error_tail")] + [st for st in s["stages"] if st.get("error_tail")]
    if failed:
        lines += ["", "## Error tails", ""]
        for r in failed:
            lines += [f"### {r.get('path') or r.get('stage')}", "", "```", *r["error_tail"], "```", ""]
    return "\n".join(lines) + "\n"
