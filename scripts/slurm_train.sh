#!/usr/bin/env bash
# Multi-node training under SLURM: one torchrun per node, each starting one process per GPU.
#
#   sbatch --nodes 4 scripts/slurm_train.sh configs/examples/sft_moe_zero3_ep.yaml train.lr=1e-5
#
# Everything after the script name goes to `python -m train` (a config and key=value overrides).
# The DeepSpeed config (ZeRO stage, offload, expert parallelism) comes from the YAML's
# `distributed` section, so this script is the same for every mode.
#SBATCH --job-name=qwen3vl-train
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --exclusive
#SBATCH --output=slurm-%j.out
set -euo pipefail

GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
PYTHON=${PYTHON:-python}
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"

# srun starts this line once per node; torchrun's c10d rendezvous on the first node assigns
# node ranks, so nodes may start in any order.
srun --kill-on-bad-exit=1 "$PYTHON" -m torch.distributed.run \
    --nnodes "$SLURM_NNODES" --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
    -m train "$@"
