#!/bin/bash
# A stand-in for `srun` on one machine, for trying deploy/slurm/ringdiff.sbatch without Slurm:
#
#   SLURM_JOB_ID=1 SLURM_JOB_NODELIST=localhost SLURM_NTASKS_PER_NODE=2 \
#   SRUN=deploy/slurm/local-srun.sh RINGDIFF_COORD_HOST=127.0.0.1 RINGDIFF_RING_BIND_HOST=127.0.0.1 \
#     bash deploy/slurm/ringdiff.sbatch --set train.steps=50
#
# It reads --ntasks/-n and --ntasks-per-node/N (other options are ignored), runs the command once
# per task with SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID and SLURM_NTASKS set, forwards SIGTERM
# and SIGINT to the tasks, and exits with the largest exit code of the tasks.
set -euo pipefail

ntasks=${SLURM_NTASKS:-1}
per_node=0
while [ $# -gt 0 ]; do
  case $1 in
    --ntasks=*) ntasks=${1#*=} ;;
    -n | --ntasks)
      ntasks=$2
      shift
      ;;
    --ntasks-per-node=*) per_node=${1#*=} ;;
    --ntasks-per-node)
      per_node=$2
      shift
      ;;
    --) shift && break ;;
    -*) ;;
    *) break ;;
  esac
  shift
done
[ $# -gt 0 ] || {
  echo "local-srun: no command" >&2
  exit 2
}
[ "$per_node" -gt 0 ] || per_node=$ntasks

pids=()
for ((i = 0; i < ntasks; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$((i % per_node)) SLURM_NODEID=$((i / per_node)) SLURM_NTASKS=$ntasks \
    SLURM_STEP_ID=0 "$@" &
  pids+=("$!")
done
# shellcheck disable=SC2317 # called by the traps
forward() { kill "-$1" "${pids[@]}" 2>/dev/null || true; }
trap 'forward TERM' TERM
trap 'forward INT' INT

code=0
for pid in "${pids[@]}"; do
  c=0
  # A signal interrupts `wait`; wait again until the task has really exited.
  while :; do
    if wait "$pid"; then c=0; else c=$?; fi
    kill -0 "$pid" 2>/dev/null || break
  done
  if [ "$c" -gt "$code" ]; then code=$c; fi
done
exit "$code"
