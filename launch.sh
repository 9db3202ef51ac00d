#!/usr/bin/env bash
# Adaptor Studio: set up (once) and run.
#   ./launch.sh [--port N] [--listen --auth user:pass]   open the studio on 127.0.0.1
#   ./launch.sh test [pytest args]                       set up and run the whole test suite
#   ./launch.sh train CONFIG.toml [--set key=value]...   train headless
#   ./launch.sh setup                                    only set up
#   ./launch.sh lock                                     re-resolve requirements.lock (same torch, newest others allowed by pyproject)
#   ./launch.sh upgrade                                  re-resolve to the newest versions, run the suite in a fresh venv,
#                                                        and rewrite requirements.lock only if it passes
# The install comes from requirements.lock (exact versions); it is redone only when the lock,
# pyproject.toml or this script change. A torch that is already installed is kept.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="${ADAPTOR_STUDIO_VENV:-$ROOT/.venv}"
LOCK="${ADAPTOR_STUDIO_LOCK:-$ROOT/requirements.lock}"
UV_PIN="uv==0.13.9"
# Lines of the lock that belong to torch's own install (its CUDA runtime differs per machine):
# torch is installed first, by pip, so it picks the build that fits the machine.
TORCH_PARTS='^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)=='

lock_torch() { grep -E '^torch==' "$LOCK" | head -n1 | cut -d' ' -f1; }
TORCH_PIN="${ADAPTOR_STUDIO_TORCH:-$(lock_torch 2>/dev/null || echo torch==2.13.0)}"

find_python() {
  for p in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$p" ] || continue
    if command -v "$p" >/dev/null 2>&1 &&
       "$p" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  echo "launch.sh: Python 3.11 or newer is needed (diffusers 0.42 requires it); set PYTHON=/path/to/python" >&2
  return 1
}

# uv (a pinned wheel from the package registry) installs the lock; pip is the fallback. uv ignores a venv's
# system site-packages, so a venv that borrows the user's torch is installed by pip, which sees it.
ensure_uv() {  # ensure_uv VENV
  "$1/bin/python" -m uv --version >/dev/null 2>&1 ||
    "$1/bin/python" -m pip --disable-pip-version-check -q install "$UV_PIN" >&2 || true
  "$1/bin/python" -m uv --version >/dev/null 2>&1
}

setup() {
  [ -f "$LOCK" ] || { echo "launch.sh: $LOCK is missing; run ./launch.sh lock" >&2; exit 1; }
  if [ ! -x "$VENV/bin/python" ]; then
    local py; py=$(find_python)
    local venv_flags=()
    # Respect a torch the user already has: let the venv see it instead of installing another.
    if "$py" -c 'import torch' 2>/dev/null; then venv_flags+=(--system-site-packages); fi
    echo "launch.sh: creating $VENV with $py" >&2
    "$py" -m venv "${venv_flags[@]}" "$VENV"
  fi
  local stamp="$VENV/.adaptor-studio-installed"
  local want; want=$(cat pyproject.toml launch.sh "$LOCK" | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    echo "launch.sh: installing $TORCH_PIN" >&2
    "$VENV/bin/python" -m pip --disable-pip-version-check -q install "$TORCH_PIN"
  fi
  local have; have=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null)
  [ "torch==${have%%+*}" = "$(lock_torch)" ] ||
    echo "launch.sh: keeping your torch $have (the lock was tested with $(lock_torch))" >&2
  # Pin whatever torch is there so nothing upgrades it; install the rest at the lock's versions.
  echo "torch==$have" > "$VENV/constraints.txt"
  grep -vE "$TORCH_PARTS" "$LOCK" > "$VENV/lock-without-torch.txt"
  echo "launch.sh: installing Adaptor Studio's locked dependencies (torch $have kept)" >&2
  if ! grep -q 'include-system-site-packages = true' "$VENV/pyvenv.cfg" && ensure_uv "$VENV"; then
    local uv=("$VENV/bin/python" -m uv pip install -q --python "$VENV/bin/python")
    "${uv[@]}" -c "$VENV/constraints.txt" -r "$VENV/lock-without-torch.txt"
    "${uv[@]}" --no-deps -e .
  else
    local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
    "${pip[@]}" install -c "$VENV/constraints.txt" -r "$VENV/lock-without-torch.txt"
    "${pip[@]}" install --no-deps -e .
  fi
  echo "$want" > "$stamp"
}

# requirements.lock: every dependency (and the dev extra) at an exact version, for every platform.
# Torch is held at the lock's torch unless ADAPTOR_STUDIO_TORCH names another.
lock() {  # lock OUTFILE [extra uv flags]
  local out="$1"; shift
  local base="${ADAPTOR_STUDIO_VENV:-$ROOT/.venv}"
  [ -x "$base/bin/python" ] || { VENV="$base" setup; }
  ensure_uv "$base" || { echo "launch.sh: could not install $UV_PIN, which resolves the lock" >&2; exit 1; }
  local torch_c; torch_c=$(mktemp); echo "$TORCH_PIN" > "$torch_c"
  "$base/bin/python" -m uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
    -c "$torch_c" --custom-compile-command "./launch.sh lock" -q -o "$out" "$@"
  sed -i "\\|^ *#   -c $torch_c\$|d" "$out"  # the temp file's name would change the lock on every run
  rm -f "$torch_c"
}

upgrade() {
  local new="$ROOT/requirements.lock.new" trial="$ROOT/.venv-upgrade"
  lock "$new" --upgrade
  if cmp -s <(grep -v '^#' "$new") <(grep -v '^#' "$LOCK"); then
    echo "launch.sh: the lock is already the newest resolution" >&2; rm -f "$new"; return 0
  fi
  diff <(grep -E '^[a-z0-9]' "$LOCK") <(grep -E '^[a-z0-9]' "$new") >&2 || true
  # (a trial venv left by a failed try is reused: setup reinstalls whatever the new lock changes)
  echo "launch.sh: testing the new versions in $trial" >&2
  if ADAPTOR_STUDIO_VENV="$trial" ADAPTOR_STUDIO_LOCK="$new" "$ROOT/launch.sh" test "$@"; then
    mv "$new" "$ROOT/requirements.lock"; rm -rf "$trial"
    echo "launch.sh: the suite passed; requirements.lock rewritten" >&2
  else
    echo "launch.sh: the suite failed with the new versions; requirements.lock is unchanged" \
         "(the trial lock is $new, its venv $trial)" >&2
    return 1
  fi
}

# The browser tests drive the system Chromium through Playwright (never `playwright install`).
ensure_chromium() {
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || [ -n "${CHROMIUM:-}" ]; then
    return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "launch.sh: installing chromium for the browser tests" >&2
    apt-get install -y -q chromium >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } ||
      echo "launch.sh: could not install chromium; the browser tests will be skipped" >&2
  else
    echo "launch.sh: no chromium found; install it (e.g. sudo apt-get install chromium) or the browser tests are skipped" >&2
  fi
}

export ADAPTOR_STUDIO_VENV="$VENV" ADAPTOR_STUDIO_LOCK="$LOCK"
cmd="${1:-app}"
case "$cmd" in
  setup) setup ;;
  lock) lock "$LOCK" ;;
  upgrade) shift; upgrade "$@" ;;
  test)
    shift; setup; ensure_chromium
    # The whole suite runs on one worker per core (at most 4): most tests wait on a single-threaded
    # subprocess (training, the studio, a browser), so two workers on two cores take ~half the time.
    # Whole files go to one worker (their module fixtures are built once). Arguments given: run them as asked.
    if [ $# -eq 0 ]; then
      workers="${ADAPTOR_STUDIO_TEST_WORKERS:-$(nproc 2>/dev/null || echo 1)}"
      [ "$workers" -le 4 ] || workers=4
      [ "$workers" -le 1 ] || set -- -n "$workers" --dist loadfile --no-loadscope-reorder  # conftest orders them
    fi
    exec "$VENV/bin/python" -m pytest "$@" ;;
  train)
    shift; setup
    exec "$VENV/bin/python" -m engine.train "$@" ;;
  app|--*)
    [ "$cmd" = app ] && shift || true
    setup
    exec "$VENV/bin/python" app.py "$@" ;;
  *)
    echo "launch.sh: unknown command '$cmd' (use: test, train CONFIG, setup, lock, upgrade, or app flags)" >&2
    exit 2 ;;
esac
