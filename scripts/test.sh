#!/usr/bin/env bash
# Runs the whole test suite (slow end-to-end tests included), setting the
# environment up first when needed (a no-op when it is up to date).
#   bash scripts/test.sh [extra pytest args]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --no-main-job
# 2 threads: the machines this is planned for have 2 cores; more threads than
# cores makes every test slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "${MMTRANSCNN_VENV:-$ROOT/.venv}/bin/python" -m pytest tests "$@"
