#!/usr/bin/env bash
# Starts tests/gpu/test_nccl_communicator with one process per GPU of this machine (NCCL refuses two processes on one
# GPU); skips (exit 77) with fewer than 2 GPUs, where there is nothing for NCCL to join.
# Usage: test_nccl.sh MPIRUN TEST_PROGRAM
mpirun=$1
program=$2
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
if [ "${gpus:-0}" -lt 2 ]; then
  echo "skipped: ${gpus:-0} GPU(s); NCCL's sum needs at least 2 (one process each)"
  exit 77
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
exec "$mpirun" -np "$gpus" "$program"
