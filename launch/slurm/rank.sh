#!/usr/bin/env bash
# One rank of a job that srun started with one task per device: SLURM's task ids become torch.distributed's
# (MASTER_ADDR and MASTER_PORT come from the caller, see train.sbatch). Every rank is srun's direct child, so
# the scheduler's SIGTERM / SIGUSR1 reach it and its exit code (75: preempted, checkpoint written) reaches srun.
export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID" WORLD_SIZE="$SLURM_NTASKS"
exec "${PYTHON:-python}" -m pipeline train "$@"
