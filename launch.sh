#!/usr/bin/env bash
# Adaptor Studio: set up (once) and run.
#   ./launch.sh [--port N] [--listen --auth user:pass]   open the studio on 127.0.0.1
#   ./launch.sh test [pytest args]                       set up and run the whole test suite
#   ./launch.sh train CONFIG.toml [--set key=value]...   train headless
#   ./launch.sh setup                                    only set up
# Re-running is quick: the install is skipped while pyproject.toml is unchanged.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
TORCH_PIN="${ADAPTOR_STUDIO_TORCH:-torch==2.13.0}"

find_python() {
  for p in "${PYTHON:-}" python3.11 python3.12 python3.10 python3; do
    [ -n "$p" ] || continue
    if command -v "$p" >/dev/null 2>&1 &&
       "$p" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' 2>/dev/null; then
      echo "$p"; return 0
    fi
  done
  echo "launch.sh: Python 3.10 or newer is needed (3.11 recommended); set PYTHON=/path/to/python" >&2
  return 1
}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    local py; py=$(find_python)
    local venv_flags=()
    # Respect a torch the user already has: let the venv see it instead of installing another.
    if "$py" -c 'import torch' 2>/dev/null; then venv_flags+=(--system-site-packages); fi
    echo "launch.sh: creating $VENV with $py" >&2
    "$py" -m venv "${venv_flags[@]}" "$VENV"
  fi
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
  local stamp="$VENV/.adaptor-studio-installed"
  local want; want=$(cat pyproject.toml launch.sh | sha256sum | cut -c1-16)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
    echo "launch.sh: installing $TORCH_PIN" >&2
    "${pip[@]}" install "$TORCH_PIN"
  fi
  # Pin whatever torch is there so no other package upgrades it.
  local have; have=$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')
  echo "torch==$have" > "$VENV/constraints.txt"
  echo "launch.sh: installing Adaptor Studio and its dependencies (torch $have kept)" >&2
  "${pip[@]}" install -c "$VENV/constraints.txt" -e ".[dev]"
  echo "$want" > "$stamp"
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

cmd="${1:-app}"
case "$cmd" in
  setup) setup ;;
  test)
    shift; setup; ensure_chromium
    exec "$VENV/bin/python" -m pytest "$@" ;;
  train)
    shift; setup
    exec "$VENV/bin/python" -m engine.train "$@" ;;
  app|--*)
    [ "$cmd" = app ] && shift || true
    setup
    exec "$VENV/bin/python" app.py "$@" ;;
  *)
    echo "launch.sh: unknown command '$cmd' (use: test, train CONFIG, setup, or app flags)" >&2
    exit 2 ;;
esac
