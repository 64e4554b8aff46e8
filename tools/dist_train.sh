#!/usr/bin/env bash
# Distributed training on one or more machines with torchrun.
#
#   bash tools/dist_train.sh CONFIG NUM_PROCS [train.py options]
#
# NUM_PROCS: processes per machine, one per GPU; on a machine without a GPU
# the processes train on the CPU with the gloo backend.
# Environment: NNODES (1), NODE_RANK (0), PORT (29500), MASTER_ADDR
# (127.0.0.1), PYTHON (python).
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: $0 CONFIG NUM_PROCS [train.py options]" >&2
    exit 2
fi

CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}
TOOLS_DIR=$(cd "$(dirname "$0")" && pwd)

PYTHONPATH="$TOOLS_DIR/..${PYTHONPATH:+:$PYTHONPATH}" \
"$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$GPUS" \
    --master_port="$PORT" \
    "$TOOLS_DIR/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
