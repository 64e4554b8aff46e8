#!/usr/bin/env bash
# Sets up everything mmtranscnn needs on a new machine, then (unless
# --no-main-job is given) runs the main job.
#
#   bash scripts/setup.sh                # set up + main job
#   bash scripts/setup.sh --no-main-job  # set up only (what the tests call)
#
# Steps: a virtual environment in .venv (git-ignored); torch + torchvision;
# mmcv 2.1.0 with compiled ops (built from the PyPI sdist when no cached wheel
# exists, cached under ${XDG_CACHE_HOME:-~/.cache}/mmtranscnn keyed by the mmcv,
# torch and Python versions and CPU/CUDA); this package (editable) with the
# OpenMMLab stack it declares and its deploy extra (mmdeploy, onnx,
# onnxruntime), held to the exact releases of
# requirements/pinned.txt; a check that `mmcv.ops` imports. A second run finds
# the stamp of the first and installs nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${MMTRANSCNN_VENV:-$ROOT/.venv}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/mmtranscnn"
MMCV_VERSION=2.1.0
TORCH_FREE_MB="${MMTRANSCNN_TORCH_FREE_MB:-6500}"  # MB free needed to install torch
case "$TORCH_FREE_MB" in
  ''|*[!0-9]*) echo "setup.sh: MMTRANSCNN_TORCH_FREE_MB must be a whole number of MB, got '$TORCH_FREE_MB'" >&2; exit 2 ;;
esac
RUN_MAIN_JOB=1
for arg in "$@"; do
  case "$arg" in
    --no-main-job) RUN_MAIN_JOB=0 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument '$arg' (allowed: --no-main-job)" >&2; exit 2 ;;
  esac
done

STEP="start"
say() { printf '\n==> [setup] %s\n' "$*"; }
fail() {
  local code=$?
  cat >&2 <<EOF

[setup] FAILED at step: $STEP (exit $code)
Likely causes:
  - no network to the package index (pip could not download): check your
    proxy / PIP_INDEX_URL and try again;
  - no C++ compiler or Python headers (mmcv build): install gcc/g++ (>= 10,
    C++20) and python3-dev;
  - a full disk: torch and its CUDA libraries need about 6 GB in .venv, the
    mmcv build about 1 GB in a temporary folder (df -h .; set TMPDIR elsewhere).
The output above names the command that failed.
EOF
  exit "$code"
}
trap fail ERR

# --- Python and the virtual environment ------------------------------------
STEP="find Python 3.11-3.12"
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for cand in python3.11 python3.12 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PYTHON="$cand"; break; fi
  done
fi
[ -n "$PYTHON" ] || { echo "[setup] no python3 found on PATH" >&2; false; }
# The pins decide the floor: torch 2.14.1 needs Python 3.10, onnxruntime
# 1.26.0 needs 3.11.
"$PYTHON" -c 'import sys; assert (3, 11) <= sys.version_info[:2] <= (3, 12), sys.version' \
  || { echo "[setup] $PYTHON is not Python 3.11-3.12 (torch 2.14.1, onnxruntime 1.26.0, mmcv 2.1)" >&2; false; }

STEP="create virtual environment $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

# Everything that decides what gets installed; when unchanged since the last
# successful run, the install steps are skipped.
STAMP="$VENV/.mmtranscnn-setup-stamp"
fingerprint() {
  cat requirements/*.txt setup.py scripts/setup.sh | "$PY" -c \
    'import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}
WANT="$(fingerprint)"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  say "environment up to date ($VENV); nothing to install"
else
  rm -f "$STAMP"

  STEP="install build tools (pip, setuptools<81, wheel, ninja)"
  say "$STEP"
  "${PIP[@]}" install -q -r requirements/build.txt

  STEP="install torch and torchvision"
  say "$STEP"
  # torch's CUDA build needs ~6 GB in the venv; a full disk otherwise shows up
  # only as pip's OSError half-way through. Skipped when torch is in already.
  if ! "$PY" -c 'import torch' >/dev/null 2>&1; then
    FREE_MB="$(df -Pm "$VENV" | awk 'NR==2 {print $4}')"
    if [ "${FREE_MB:-0}" -lt "$TORCH_FREE_MB" ]; then
      echo "[setup] only ${FREE_MB} MB free on the disk of $VENV; torch and" \
        "torchvision need about $TORCH_FREE_MB MB (free some space, or set" \
        "MMTRANSCNN_VENV to a folder on a larger disk)" >&2
      false
    fi
  fi
  "${PIP[@]}" install -q -r requirements/torch.txt

  # --- mmcv with compiled ops ----------------------------------------------
  STEP="install mmcv $MMCV_VERSION with ops"
  KEY="$("$PY" - <<'EOF'
import shutil, sys, torch
cuda = torch.cuda.is_available() and shutil.which('nvcc') is not None
flavour = f"cu{torch.version.cuda.replace('.', '')}" if cuda else 'cpu'
print(f"torch{torch.__version__.split('+')[0]}-py{sys.version_info[0]}{sys.version_info[1]}-{flavour}")
EOF
)"
  WHEEL_DIR="$CACHE/wheels/mmcv-$MMCV_VERSION-$KEY"
  MMCV_WHEEL=()
  if ! "$PY" -c "import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != '$MMCV_VERSION')" 2>/dev/null; then
    if ! ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
      STEP="build mmcv $MMCV_VERSION from source ($KEY; 8-15 min on 2 cores)"
      say "$STEP"
      BUILD="$(mktemp -d)"
      "${PIP[@]}" download -q --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$BUILD"
      tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
      SRC="$BUILD/mmcv-$MMCV_VERSION"
      # torch >= 2.14 headers refuse anything older than C++20; mmcv 2.1.0
      # asks for C++17. The ops compile unchanged under C++20.
      sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
      if [[ "$KEY" == *-cu* ]]; then export FORCE_CUDA=1; fi
      (cd "$SRC" && MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$BUILD/dist" .)
      mkdir -p "$WHEEL_DIR"
      cp "$BUILD"/dist/mmcv-*.whl "$WHEEL_DIR"/
      rm -rf "$BUILD"
    else
      say "using cached mmcv wheel from $WHEEL_DIR"
    fi
    MMCV_WHEEL=("$WHEEL_DIR"/mmcv-*.whl)
  fi

  # One resolver pass for mmcv (its own light dependencies come with it),
  # this package and everything it declares: the stack in the ranges of
  # setup.py, held to CI's exact releases by the
  # constraints in requirements/pinned.txt (a pin outside a range fails here).
  STEP="install mmtranscnn (editable), the OpenMMLab stack (mmcv, mmengine, mmdet, mmpretrain, mmseg) and mmdeploy with ONNX Runtime"
  say "$STEP"
  "${PIP[@]}" install -q --no-build-isolation -c requirements/pinned.txt \
    "${MMCV_WHEEL[@]}" -e ".[all]"

  STEP="install OpenMMLab's mim command (openmim without openxlab)"
  say "$STEP"
  "${PIP[@]}" install -q -r requirements/mim.txt
  "${PIP[@]}" install -q --no-deps -r requirements/openmim.txt

  STEP="verify imports (mmcv.ops, mmdet, mmpretrain, mmseg, mmdeploy, onnxruntime, mmtranscnn)"
  say "$STEP"
  "$PY" -c "import mmcv.ops, mmdet.models, mmpretrain.models, mmseg.models, mmdeploy.apis, onnxruntime, mmtranscnn; print('mmcv', mmcv.__version__, '| mmdeploy', mmdeploy.__version__, '| onnxruntime', onnxruntime.__version__, '| mmtranscnn', mmtranscnn.__version__)"
  echo "$WANT" > "$STAMP"
fi

if [ "$RUN_MAIN_JOB" = 1 ]; then
  STEP="main job"
  say "main job: $PY tools/main_job.py"
  "$PY" tools/main_job.py
fi
