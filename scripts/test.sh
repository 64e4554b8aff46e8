#!/usr/bin/env bash
# Runs the whole test suite (slow end-to-end tests included), setting the
# environment up first when needed (a no-op when it is up to date), then the
# CPU speed-up and H-MHSA tests once more with ATen, oneDNN and MKL limited
# to AVX2: users' CPUs differ from this one, and the CPU kernels differ with
# them.
#   bash scripts/test.sh [extra pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --no-main-job
# 2 threads: the machines this is planned for have 2 cores; more threads than
# cores makes every test slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
PY="${MMTRANSCNN_VENV:-$ROOT/.venv}/bin/python"
"$PY" -m pytest tests "$@"
echo "==> [test] the CPU kernels and H-MHSA again with ATen, oneDNN and MKL limited to AVX2"
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \
  "$PY" -m pytest tests/test_ops.py tests/test_hmhsa.py "$@"
