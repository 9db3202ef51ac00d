#!/usr/bin/env bash
# Downloads, on this machine, the wheels that bench/gpu_check.sh installs on a GPU machine that has a CUDA
# torch but no internet (and may lack diffusers and the rest of our stack).
#
#   bash bench/gpu_wheels.sh [--python 3.12] [--dest .whl] [--bnb-cuda 128,130] [--with pillow,numpy] [--no-bnb]
#
# - Versions come from requirements.lock (its environment markers evaluated for the target Python), so the
#   check runs the stack the project pins. bitsandbytes is not in the lock (pyproject's optional `gpu`
#   extra): its pin is BNB_VERSION below, the only place it is written.
# - The set is what `python -m engine.train` and bench/train_speed.py import at run time, less torch and
#   the big binaries a CUDA machine has anyway (numpy, pillow: add them with --with numpy,pillow).
# - bitsandbytes' wheel (41 MiB) holds a kernel library for every CUDA and ROCm release; only the CUDA
#   builds named by --bnb-cuda stay (bitsandbytes loads libbitsandbytes_cuda<torch.version.cuda>.so).
# - The wheels travel inside the working tree, whose limit is 64 MiB in all: the script prints the sizes
#   and fails if the tree plus the wheels would exceed it.
# - `--dest` is emptied of *.whl first, so it holds one version of each package.
set -uo pipefail
cd "$(dirname "$0")/.."

PYVER=3.12
DEST=.whl
BNB_VERSION="${BNB_VERSION:-0.50.2}"
BNB_CUDA=128,130
WITH=""
LIMIT_MIB=64
LOCK=requirements.lock
PY="${PYTHON:-python3}"
# What the engine and the bench import at run time (verified by running them with only these, torch and its
# own requirements, numpy and pillow; see bench/README.md). typing-extensions, filelock and fsspec are torch
# requirements too: gpu_check.sh installs those only where the machine's copy is missing or older.
PACKAGES=(diffusers transformers peft accelerate safetensors tokenizers huggingface-hub tomli-w
          httpx2 httpcore2 anyio h11 idna brotli truststore certifi requests urllib3 charset-normalizer
          pyyaml regex tqdm packaging psutil typing-extensions filelock fsspec)

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PYVER="$2"; shift 2 ;;
    --dest) DEST="$2"; shift 2 ;;
    --bnb-cuda) BNB_CUDA="$2"; shift 2 ;;
    --no-bnb) BNB_CUDA=""; shift ;;
    --with) WITH="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_wheels.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$PYVER" =~ ^3\.[0-9]+$ ]] || { echo "gpu_wheels.sh: --python takes a version like 3.12, not '$PYVER'" >&2; exit 2; }
[ -f "$LOCK" ] || { echo "gpu_wheels.sh: $LOCK is missing" >&2; exit 2; }
IFS=',' read -r -a extra <<< "$WITH"
names=("${PACKAGES[@]}" "${extra[@]}")

# name==version for each, from the lock, markers evaluated for Linux x86-64 CPython $PYVER
mapfile -t pins < <("$PY" - "$LOCK" "$PYVER" "${names[@]}" <<'EOF'
import sys
try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip vendors packaging
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
lock, pyver, names = sys.argv[1], sys.argv[2], sys.argv[3:]
env = {"python_version": pyver, "python_full_version": pyver + ".0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
pins = {}
for line in open(lock):
    line = line.split("#")[0].strip()
    if not line or line.startswith("-"):
        continue
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate(env):
        pins[canonicalize_name(req.name)] = str(req.specifier).lstrip("=")
missing = [n for n in names if n and canonicalize_name(n) not in pins]
if missing:
    sys.exit(f"gpu_wheels.sh: not in the lock for Python {pyver}: {', '.join(missing)}")
for n in names:
    if n:
        print(f"{n}=={pins[canonicalize_name(n)]}")
EOF
) || exit 2
[ "${#pins[@]}" -gt 0 ] || { echo "gpu_wheels.sh: could not read versions from $LOCK" >&2; exit 2; }
[ -n "$BNB_CUDA" ] && pins+=("bitsandbytes==$BNB_VERSION")

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
platforms=()
for n in 39 35 34 31 28 27 24 17; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
platforms+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
echo "gpu_wheels.sh: downloading ${#pins[@]} wheels for CPython $PYVER on Linux x86-64 into $DEST/"
printf '  %s\n' "${pins[@]}"
timeout 900 "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PYVER" --implementation cp "${platforms[@]}" -d "$DEST" "${pins[@]}" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) ||
  { echo "gpu_wheels.sh: pip download failed (see above)" >&2; exit 1; }

if [ -n "$BNB_CUDA" ]; then
  "$PY" - "$DEST" "$BNB_CUDA" <<'EOF' || exit 1
# Keep only the CUDA kernel libraries asked for; drop the rest and their RECORD lines.
import glob, os, re, sys, zipfile
dest, keep = sys.argv[1], {f"libbitsandbytes_cuda{v.strip()}.so" for v in sys.argv[2].split(",") if v.strip()}
(path,) = glob.glob(os.path.join(dest, "bitsandbytes-*.whl"))
lib = re.compile(r"^bitsandbytes/libbitsandbytes_[^/]+\.so$")
tmp = path + ".tmp"
kept, dropped = [], []
with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as out:
    names = {i.filename for i in src.infolist()}
    absent = sorted(k for k in keep if "bitsandbytes/" + k not in names)
    if absent:
        os.remove(tmp)
        have = sorted(n.split("/")[-1] for n in names if "libbitsandbytes_cuda" in n)
        sys.exit(f"gpu_wheels.sh: bitsandbytes has no {', '.join(absent)}; it has {', '.join(have)}")
    for info in src.infolist():
        name = info.filename
        if lib.match(name) and name.split("/")[-1] not in keep:
            dropped.append(name.split("/")[-1])
            continue
        data = src.read(info)
        if name.endswith(".dist-info/RECORD"):
            lines = [ln for ln in data.decode().splitlines() if not (lib.match(ln.split(",")[0])
                     and ln.split(",")[0].split("/")[-1] not in keep)]
            data = ("\n".join(lines) + "\n").encode()
        if lib.match(name):
            kept.append(name.split("/")[-1])
        out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
os.replace(tmp, path)
print(f"gpu_wheels.sh: bitsandbytes keeps {', '.join(sorted(kept))}; dropped {len(dropped)} other kernel libraries")
EOF
fi

wheels_b=$(cat "$DEST"/*.whl | wc -c)
# what travels besides: tracked files and untracked files git does not ignore (.whl itself is ignored)
tree_b=$( { git ls-files -z --cached; git ls-files -z --others --exclude-standard; } |
          xargs -0 -r stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
mib() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1048576}'; }
echo "gpu_wheels.sh: $(ls "$DEST"/*.whl | wc -l) wheels, $(mib "$wheels_b") MiB; the working tree $(mib "$tree_b") MiB;" \
     "together $(mib $((wheels_b + tree_b))) MiB of the ${LIMIT_MIB} MiB a device run carries"
ls -S "$DEST"/*.whl | while read -r w; do printf '  %6s MiB  %s\n' "$(mib "$(stat -c %s "$w")")" "$(basename "$w")"; done
if [ $((wheels_b + tree_b)) -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "gpu_wheels.sh: over the ${LIMIT_MIB} MiB limit: keep fewer bitsandbytes CUDA builds (--bnb-cuda), or drop --with" >&2
  exit 1
fi
case "$(realpath -m "$DEST")/" in
  "$(pwd)"/*) inside=1 ;;
  *) inside=0 ;;
esac
if [ "$inside" = 1 ] && ! git check-ignore -q "$DEST/x.whl" 2>/dev/null; then
  echo "gpu_wheels.sh: warning: $DEST is not ignored by git; add /$DEST/ to .gitignore" >&2
fi
