#!/usr/bin/env bash
# Training on a SLURM cluster, one task per GPU.
#
#   bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options]
#
# Environment: GPUS (8, tasks in all), GPUS_PER_NODE (8, tasks per node),
# CPUS_PER_TASK (5), SRUN_ARGS (extra srun options), PYTHON (python),
# GRES (gpu:$GPUS_PER_NODE; set it empty, GRES=, on a CPU-only cluster, where
# the tasks then train with gloo).
set -euo pipefail

if [ "$#" -lt 4 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG WORK_DIR [train.py options]" >&2
    exit 2
fi

PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
PYTHON=${PYTHON:-python}
GRES=${GRES-"gpu:${GPUS_PER_NODE}"}
TOOLS_DIR=$(cd "$(dirname "$0")" && pwd)

set -x
# SRUN_ARGS is split into words on purpose (several srun options).
# shellcheck disable=SC2086
PYTHONPATH="$TOOLS_DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    ${GRES:+--gres="$GRES"} \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    $SRUN_ARGS \
    "$PYTHON" -u "$TOOLS_DIR/train.py" "$CONFIG" \
    --work-dir="$WORK_DIR" --launcher=slurm "${@:5}"
