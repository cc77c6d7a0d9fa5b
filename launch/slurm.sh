#!/usr/bin/env bash
# Run scaletrain on a SLURM allocation: one Ray head + one Ray worker per remaining node,
# then `scaletrain train ... engine.launcher=ray` on the head, then Ray is stopped.
#
#   sbatch launch/slurm.sh configs/default.yaml engine.zero_stage=2 engine.precision=bf16
#
# Every node runs `ray start --block` under srun (it stays in the foreground, so SLURM owns
# and cleans up the processes). Needs scaletrain installed on the nodes (module, venv or the
# image in docker/) and out_dir on a shared filesystem.
#SBATCH --job-name=scaletrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail

CONFIG="${1:-configs/default.yaml}"
if [ "$#" -gt 0 ]; then shift; fi
GPUS_PER_NODE="${SCALETRAIN_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}"
CPUS_PER_NODE="${SLURM_CPUS_PER_TASK:-32}"
PORT="${SCALETRAIN_RAY_PORT:-6379}"

mapfile -t NODES < <(scontrol show hostnames "${SLURM_JOB_NODELIST:?run this under sbatch or salloc}")
HEAD="${NODES[0]}"
HEAD_IP="$(srun --nodes=1 --ntasks=1 -w "$HEAD" hostname --ip-address | awk '{print $1}')"
export RAY_ADDRESS="${HEAD_IP}:${PORT}"
echo "Ray head: ${HEAD} (${RAY_ADDRESS}); ${#NODES[@]} node(s), ${GPUS_PER_NODE} GPU(s) each"

srun --nodes=1 --ntasks=1 -w "$HEAD" \
  ray start --head --node-ip-address="$HEAD_IP" --port="$PORT" \
  --num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE" --block &
sleep 15

if [ "${#NODES[@]}" -gt 1 ]; then
  srun --nodes=$(( ${#NODES[@]} - 1 )) --ntasks=$(( ${#NODES[@]} - 1 )) --exclude="$HEAD" \
    ray start --address="$RAY_ADDRESS" \
    --num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE" --block &
  sleep 15
fi

WORKERS=$(( ${#NODES[@]} * GPUS_PER_NODE ))
status=0
scaletrain train "$CONFIG" engine.launcher=ray engine.workers="$WORKERS" \
  engine.gpus_per_worker=1 resume=auto "$@" || status=$?

ray stop || true
exit "$status"
