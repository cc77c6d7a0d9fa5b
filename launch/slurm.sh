#!/usr/bin/env bash
# Run scaletrain on a SLURM allocation: one Ray head + one Ray worker per remaining node,
# then `scaletrain train ... engine.launcher=ray resume=auto` on the head, then Ray is stopped.
#
#   sbatch launch/slurm.sh configs/default.yaml engine.zero_stage=2 engine.precision=bf16
#
# Every node runs `ray start --block` under srun (it stays in the foreground, so SLURM owns
# and cleans up the processes). Needs scaletrain installed on the nodes (module, venv or the
# image in docker/) and out_dir on a shared filesystem.
#
# Preemption and time limits (docs/engine.md, "Preemption and elastic resume"): SLURM sends
# SIGUSR1 to this batch shell 120 s before the time limit (--signal=B:USR1@120), and SIGTERM
# on preemption. The trap forwards the signal to `scaletrain train`, which finishes its step,
# checkpoints and exits 75; the job is then requeued (`scontrol requeue`) and the next start
# continues from the checkpoint with resume=auto, on however many nodes it gets (elastic
# resume). At most SCALETRAIN_MAX_REQUEUES requeues (default 20; SLURM_RESTART_COUNT counts).
#SBATCH --job-name=scaletrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@120
set -euo pipefail

CONFIG="${1:-configs/default.yaml}"
if [ "$#" -gt 0 ]; then shift; fi
GPUS_PER_NODE="${SCALETRAIN_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}"
CPUS_PER_NODE="${SLURM_CPUS_PER_TASK:-32}"
PORT="${SCALETRAIN_RAY_PORT:-6379}"
RAY_WAIT_S="${SCALETRAIN_RAY_WAIT_S:-15}"
MAX_REQUEUES="${SCALETRAIN_MAX_REQUEUES:-20}"
EXIT_PREEMPTED=75

mapfile -t NODES < <(scontrol show hostnames "${SLURM_JOB_NODELIST:?run this under sbatch or salloc}")
HEAD="${NODES[0]}"
HEAD_IP="$(srun --nodes=1 --ntasks=1 -w "$HEAD" hostname --ip-address | awk '{print $1}')"
export RAY_ADDRESS="${HEAD_IP}:${PORT}"
echo "Ray head: ${HEAD} (${RAY_ADDRESS}); ${#NODES[@]} node(s), ${GPUS_PER_NODE} GPU(s) each;" \
  "start ${SLURM_RESTART_COUNT:-0} of this job"

srun --nodes=1 --ntasks=1 -w "$HEAD" \
  ray start --head --node-ip-address="$HEAD_IP" --port="$PORT" \
  --num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE" --block &
sleep "$RAY_WAIT_S"

if [ "${#NODES[@]}" -gt 1 ]; then
  srun --nodes=$(( ${#NODES[@]} - 1 )) --ntasks=$(( ${#NODES[@]} - 1 )) --exclude="$HEAD" \
    ray start --address="$RAY_ADDRESS" \
    --num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE" --block &
  sleep "$RAY_WAIT_S"
fi

WORKERS=$(( ${#NODES[@]} * GPUS_PER_NODE ))
SIGNALLED=""
TRAIN_PID=""
# shellcheck disable=SC2329  # invoked by the traps below
forward() {  # pass the signal on: training checkpoints and exits 75 (a second one: at once)
  SIGNALLED="$1"
  echo "slurm.sh: SIG$1 received; forwarding it to scaletrain (pid ${TRAIN_PID:-none})"
  if [ -n "$TRAIN_PID" ]; then kill -s "$1" "$TRAIN_PID" 2>/dev/null || true; fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

scaletrain train "$CONFIG" engine.launcher=ray engine.workers="$WORKERS" \
  engine.gpus_per_worker=1 resume=auto "$@" &
TRAIN_PID=$!
status=0
while true; do  # `wait` returns early when a trapped signal arrives: wait again
  wait "$TRAIN_PID" && status=0 || status=$?
  if ! kill -0 "$TRAIN_PID" 2>/dev/null; then break; fi
done
trap - USR1 TERM

ray stop || true
if [ "$status" -eq "$EXIT_PREEMPTED" ] || { [ -n "$SIGNALLED" ] && [ "$status" -ne 0 ]; }; then
  if [ "${SLURM_RESTART_COUNT:-0}" -lt "$MAX_REQUEUES" ]; then
    echo "slurm.sh: interrupted (exit ${status}); requeueing job ${SLURM_JOB_ID}; it resumes with resume=auto"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "slurm.sh: interrupted (exit ${status}) but already requeued ${SLURM_RESTART_COUNT} times" \
    "(SCALETRAIN_MAX_REQUEUES=${MAX_REQUEUES}); not requeueing"
fi
exit "$status"
