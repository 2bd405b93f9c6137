#!/usr/bin/env bash
# Run slm_jax on a multi-node GPU cluster with Slurm: write an sbatch script that starts one
# `python -m slm_jax.main` process per node (or per GPU) with srun, then submit it with sbatch, or run
# it with bash inside an existing allocation (--srun). jax.distributed.initialize() finds the
# coordinator, process count and process id in Slurm's environment (SLURM_JOB_ID,
# SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID). The repo must be on a file system
# that every node sees.
set -euo pipefail

PROG=slurm.sh
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/slurm.sh --gin_file FILE [options] [--gin.X=Y ...]

Write an sbatch script running `srun ... python -m slm_jax.main --gin_file=... --gin.X=Y ...` and
submit it (or, with --srun, run it inside the current allocation).

Required:
  --gin_file FILE         gin file, relative to the repo root or absolute (repeatable)
Options:
  --gin.NAME=VALUE        gin binding passed through unchanged (repeatable)
  --run_dir DIR           adds --gin.RunConfig.run_dir='DIR' (must be shared by all nodes)
  --nodes N               number of nodes (default: 1)
  --gpus_per_node G       GPUs per node (default: 8; 0 for CPU-only nodes)
  --per_gpu               one process per GPU (default: one process per node, seeing all its GPUs)
  --job_name NAME         Slurm job name (default: slm_jax)
  --partition P, --account A, --qos Q, --time T, --cpus_per_task C, --mem M
                          the matching #SBATCH options
  --sbatch_arg=ARG        extra #SBATCH line (repeatable), e.g. --sbatch_arg=--exclusive
  --srun_arg=ARG          extra srun argument (repeatable), e.g. --srun_arg=--mpi=none
  --repo DIR              repo root on the shared file system (default: this script's repo)
  --python PYTHON         python to run (default: REPO/.venv/bin/python if it exists, else python3)
  --setup CMD             shell command run before srun in the script (e.g. 'module load cuda/12.4')
  --env NAME=VALUE        environment variable exported in the script (repeatable)
  --log_dir DIR           where the script and Slurm's output (%x-%j.out) go (default: REPO/logs)
  --srun                  run the script with bash now, inside an existing allocation (salloc)
  --dry-run               print the script and the sbatch/bash command; write and run nothing
  -h, --help              this message

Example:
  launch/slurm.sh --nodes 2 --gpus_per_node 8 --partition gpu --time 12:00:00 \
      --gin_file gin/models/tiny.gin --run_dir /shared/runs/slm1 --gin.RunConfig.train_steps=2000
EOF
}

# ----------------------------------------------------------------------------- arguments

NODES=1 GPUS=8 PER_GPU=0 JOB_NAME=slm_jax PYTHON="" SETUP="" LOG_DIR="" SRUN_MODE=0
SBATCH_LINES=() SRUN_ARGS=() ENVS=()

parse_flag() {
  case $1 in
    --per_gpu) PER_GPU=1 ;;
    --srun) SRUN_MODE=1 ;;
    *) return 1 ;;
  esac
}

parse_option() {
  case $1 in
    --nodes) NODES=$2 ;;
    --gpus_per_node) GPUS=$2 ;;
    --job_name) JOB_NAME=$2 ;;
    --partition|--account|--qos|--time|--mem) SBATCH_LINES+=("$1=$2") ;;
    --cpus_per_task) SBATCH_LINES+=("--cpus-per-task=$2") ;;
    --sbatch_arg) SBATCH_LINES+=("$2") ;;
    --srun_arg) SRUN_ARGS+=("$2") ;;
    --repo) REPO=$2 ;;
    --setup) SETUP=$2 ;;
    --env) ENVS+=("$2") ;;
    --log_dir) LOG_DIR=$2 ;;
    *) return 1 ;;
  esac
}

parse_args "$@"
require_gin_files
[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer, got: $NODES"
[[ $GPUS =~ ^[0-9]+$ ]] || die "--gpus_per_node must be a non-negative integer, got: $GPUS"
(( PER_GPU && GPUS == 0 )) && die "--per_gpu needs --gpus_per_node > 0"
resolve_repo
[[ $JOB_NAME =~ ^[A-Za-z0-9._-]+$ ]] || die "--job_name must be letters, digits, '.', '_' or '-': $JOB_NAME"
for line in ${SBATCH_LINES[@]+"${SBATCH_LINES[@]}"}; do
  [[ $line == --* && $line != *[[:space:]]* ]] || die "#SBATCH options must look like --opt=value with no spaces: $line"
done
check_envs
for f in "${GIN_FILES[@]}"; do
  if [[ $f == /* ]]; then [[ -f $f ]] || die "--gin_file not found: $f"
  else [[ -f $REPO/$f ]] || die "--gin_file not found in the repo: $REPO/$f"
  fi
done
check_run_dir
default_python
[[ -n $LOG_DIR ]] || LOG_DIR=$REPO/logs
SCRIPT=$LOG_DIR/$JOB_NAME.sbatch

# ----------------------------------------------------------------------------- the sbatch script

if (( PER_GPU )); then TASKS=$GPUS; else TASKS=1; fi
main_args
MAIN=("$PYTHON" -m slm_jax.main "${MAIN_ARGS[@]}")
SRUN=(srun --nodes="$NODES" --ntasks-per-node="$TASKS" --kill-on-bad-exit=1 ${SRUN_ARGS[@]+"${SRUN_ARGS[@]}"})

write_script() {
  echo "#!/bin/bash"
  echo "# slm_jax.main on $NODES node(s), $TASKS process(es) per node; written by launch/$PROG."
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=$TASKS"
  (( GPUS > 0 )) && echo "#SBATCH --gres=gpu:$GPUS"
  echo "#SBATCH --output=$LOG_DIR/%x-%j.out"
  local line
  for line in ${SBATCH_LINES[@]+"${SBATCH_LINES[@]}"}; do echo "#SBATCH $line"; done
  echo "set -euo pipefail"
  echo "cd $(printf '%q' "$REPO")"
  [[ -n $SETUP ]] && echo "$SETUP"
  echo "export PYTHONUNBUFFERED=1"
  if (( GPUS > 0 && ! PER_GPU )); then
    # JAX would otherwise give each process only GPU number SLURM_LOCALID (one GPU per process).
    echo "# One process per node: each process uses all of its node's GPUs."
    echo "export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $(( GPUS - 1 )))"
  elif (( PER_GPU )); then
    echo "# One process per GPU: JAX gives process SLURM_LOCALID the GPU of that number."
  fi
  local e
  for e in ${ENVS[@]+"${ENVS[@]}"}; do echo "export $(printf '%q' "${e%%=*}")=$(printf '%q' "${e#*=}")"; done
  echo "# jax.distributed.initialize() reads the coordinator, process count and id from Slurm's env."
  echo "$(quote_cmd "${SRUN[@]}") $(quote_cmd "${MAIN[@]}")"
}

if (( SRUN_MODE )); then SUBMIT=(bash "$SCRIPT"); else SUBMIT=(sbatch "$SCRIPT"); fi

if (( DRY_RUN )); then
  info "(would write $SCRIPT:)"
  write_script
  printf '[dry-run] %s\n' "$(quote_cmd "${SUBMIT[@]}")"
  exit 0
fi

if (( SRUN_MODE )); then
  [[ -n ${SLURM_JOB_ID:-} ]] || die "--srun runs inside an existing allocation (salloc), but SLURM_JOB_ID is not set"
fi
command -v "${SUBMIT[0]}" >/dev/null || die "${SUBMIT[0]} not found on PATH"
mkdir -p "$LOG_DIR"
write_script > "$SCRIPT"
info "wrote $SCRIPT"
info "+ $(quote_cmd "${SUBMIT[@]}")"
exec "${SUBMIT[@]}"
