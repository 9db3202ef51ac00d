#!/usr/bin/env bash
# One check of every CUDA path on one GPU, in under 8 minutes on an H100/H200 (bench/README.md).
#
#   bash bench/gpu_check.sh                 on a GPU machine: writes $OUT (or ./gpu_check_out/)
#   bash bench/gpu_check.sh --cpu-smoke     the same plumbing on a CPU, tiny models, 2 steps a path
#
# Stages, each with its own timeout; a failed stage is recorded and the next one still runs:
#   install      the carried wheels (.whl/, from bench/gpu_wheels.sh) this machine lacks, into /tmp/site
#   env          nvidia-smi, torch and CUDA, package versions and origins, bitsandbytes, SDPA kernels
#   build        full-size random SD 1.5 and SDXL, built on the GPU (tiny models with --cpu-smoke)
#   paths        a few steps of each CUDA path through `python -m engine.train` (bench/gpu_check.py)
#   train_speed  python -m bench.train_speed --json on the rows the time allows
#   report       $OUT/gpu_check.md (the table), gpu_check.json, train_speed.json; log.txt has everything
#
# Options: --cpu-smoke; --budget SECONDS (460 on a GPU, 600 with --cpu-smoke: no stage runs past it, then
# the report); --only PATH,PATH (the training paths to run); --speed-rows ROW,ROW|none; --wheels DIR|none
# (.whl on a GPU, none with --cpu-smoke); --site DIR (where the wheels install); --out DIR.
# Exit status: 0 when every path and stage is ok or skipped, else 1.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)

MODE=gpu BUDGET="" ONLY="" SPEED_ROWS="" WHEELS="" SITE="" OUTDIR="${OUT:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-smoke) MODE=cpu; shift ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --speed-rows) SPEED_ROWS="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --site) SITE="$2"; shift 2 ;;
    --out) OUTDIR="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX") || exit 2
if [ "$MODE" = gpu ]; then
  BUDGET=${BUDGET:-460} WHEELS=${WHEELS:-.whl} SITE=${SITE:-/tmp/site} SPEED_RESERVE=240
  # the DiT rows first (not yet measured: Flux.1 on 12 and 24 GB, SD3.5 Large), then the SD rows as time allows
  SPEED_ROWS=${SPEED_ROWS:-flux1-lora-1024-b1-12gb,flux1-lora-1024-b1,sd35-lora-1024-b1,sdxl-lora-1024-b8,sdxl-lora-1024-b1-minmem,sd15-lora-512-b16,sdxl-full-1024-b1}
  SPEED_ARGS=(--device cuda --steps 10 --warmup 3 --images 16 --timeout 240)
  # the full-size models take ~10 GB: outside the working tree
  export ADAPTOR_STUDIO_CACHE="${ADAPTOR_STUDIO_CACHE:-/tmp/adaptor-studio-cache}"
else
  BUDGET=${BUDGET:-600} WHEELS=${WHEELS:-none} SITE=${SITE:-$WORK/site} SPEED_RESERVE=60
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # tiny models: threads only contend on a shared CPU
  SPEED_ROWS=${SPEED_ROWS:-sd15-lora-512-b1}
  SPEED_ARGS=(--device cpu --tiny --steps 2 --warmup 1 --images 4 --timeout 120)
fi
[[ "$BUDGET" =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: --budget takes seconds, not '$BUDGET'" >&2; exit 2; }
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$ROOT/.venv/bin/python" ]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi

[ -n "$OUTDIR" ] || OUTDIR=$ROOT/gpu_check_out
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG=$OUTDIR/log.txt
rm -f "$OUTDIR/gpu_check.md" "$OUTDIR/gpu_check.json" "$OUTDIR/train_speed.json"
: > "$LOG"

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false PIP_ROOT_USER_ACTION=ignore
START=$(date +%s)
export GPU_CHECK_START=$START
DEADLINE=$((START + BUDGET))
REPORT_RESERVE=15

log() { echo "$*" | tee -a "$LOG"; }

# stage NAME CAP [UNTIL] -- COMMAND...: at most CAP seconds and never past UNTIL (default: the deadline less
# the report's time); the Python stages also read GPU_CHECK_DEADLINE and stop their own children before it.
stage() {
  local name=$1 cap=$2 until=$((DEADLINE - REPORT_RESERVE))
  shift 2
  if [ "$1" != -- ]; then until=$1; shift; fi
  shift
  local now t rc status budget=1
  now=$(date +%s)
  t=$((until - now))
  if [ "$t" -gt "$cap" ]; then t=$cap; budget=0; fi
  if [ "$t" -lt 5 ]; then
    log "=== $name: skipped (time budget)"
    printf '%s\tskipped\t\t0\n' "$name" >> "$WORK/stages.tsv"
    return 0
  fi
  log "=== $name (at most $t s, $(date +%T), $((now - START)) s in)"
  export GPU_CHECK_DEADLINE=$((now + t - 5))
  timeout -k 10 "$t" "$@" 2>&1 | tee -a "$LOG" "$WORK/stage-$name.log"
  rc=${PIPESTATUS[0]}
  case "$rc" in
    0) status=ok ;;
    124|137) if [ "$budget" = 1 ]; then status="stopped (time budget)"; else status="FAIL (timeout)"; fi ;;
    *) status=FAIL ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(($(date +%s) - now))" >> "$WORK/stages.tsv"
  log "=== $name: $status (exit $rc)"
}

log "gpu_check.sh: mode $MODE, budget $BUDGET s, python $PY, out $OUTDIR, work $WORK"
if [ "$WHEELS" != none ] && compgen -G "$WHEELS/*.whl" > /dev/null; then
  stage install 180 -- "$PY" -m bench.gpu_check install-wheels "$WHEELS" --site "$SITE" --report "$WORK/wheels.json"
  if [ -n "$(ls -A "$SITE" 2>/dev/null)" ]; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    log "PYTHONPATH=$PYTHONPATH"
  fi
elif [ "$WHEELS" != none ]; then
  log "=== install: no wheels in $WHEELS (run bench/gpu_wheels.sh here, and carry .whl); using what is installed"
fi
stage env 120 -- "$PY" -m bench.gpu_check env --mode "$MODE" --report "$WORK/env.json"
stage build 300 -- "$PY" -m bench.gpu_check build --mode "$MODE" --report "$WORK/build.json"
paths_args=(--mode "$MODE" --work "$WORK/paths" --report "$WORK/paths.jsonl")
[ -n "$ONLY" ] && paths_args+=(--only "$ONLY")
stage paths 100000 $((DEADLINE - REPORT_RESERVE - SPEED_RESERVE)) -- "$PY" -m bench.gpu_check paths "${paths_args[@]}"
cuda_seen() { "$PY" -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get("cuda_available") else 1)' \
                "$WORK/env.json" 2>/dev/null; }
if [ "$MODE" = gpu ] && [ "$SPEED_ROWS" != none ] && ! cuda_seen; then
  log "=== train_speed: skipped (torch sees no CUDA device; on a CPU use --cpu-smoke)"
  printf 'train_speed\tskipped (no CUDA)\t\t0\n' >> "$WORK/stages.tsv"
elif [ "$SPEED_ROWS" != none ]; then
  stage train_speed 100000 -- "$PY" -m bench.train_speed --json --rows "$SPEED_ROWS" "${SPEED_ARGS[@]}"
fi
# the report always runs, past the deadline if it must
log "=== report"
timeout -k 5 60 "$PY" -m bench.gpu_check report --mode "$MODE" --work "$WORK" --out "$OUTDIR" 2>&1 | tee -a "$LOG"
rc=${PIPESTATUS[0]}
log "gpu_check.sh: done in $(($(date +%s) - START)) s; $OUTDIR: $(cd "$OUTDIR" && ls | tr '\n' ' ')"
rm -rf "$WORK"
exit "$rc"
