#!/usr/bin/env bash
# Run slm_jax on a Cloud TPU VM pod slice: create the slice (or reuse it), copy this repo to every
# worker, install it, start the same `python -m slm_jax.main ...` on all workers, stream their output
# to a local log file, and on Ctrl-C / SIGTERM stop the remote processes (SIGTERM, so the trainer
# saves a checkpoint). `--dry-run` prints every gcloud command instead of running it.
# Before any TPU VM is created, a pre-flight compiles the run's train step for the requested slice
# on this host (benchmarks/tpu_compile.py, libtpu's compile-only client) and refuses a config that
# does not fit the chips' HBM, printing the per-device memory table.
set -euo pipefail

PROG=tpu_pod.sh
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --name NAME --zone ZONE --accelerator TYPE --gin_file FILE [options] [--gin.X=Y ...]

Create (or reuse) a TPU VM slice, copy the repo to all workers, install, and run
`python -m slm_jax.main --gin_file=... --gin.X=Y ...` on every worker.

Required:
  --name NAME             TPU VM name
  --zone ZONE             e.g. us-central2-b
  --accelerator TYPE      e.g. v4-32, v5litepod-16, v5p-64, v6e-16 (not needed with --reuse/--stop)
  --gin_file FILE         gin file, relative to the repo root (repeatable)
Options:
  --gin.NAME=VALUE        gin binding passed through unchanged (repeatable), e.g. --gin.RunConfig.train_steps=1000
  --run_dir DIR           adds --gin.RunConfig.run_dir='DIR'; use gs://... on multi-host slices (shared storage)
  --project PROJECT       GCP project (default: gcloud's configured project)
  --version RUNTIME       TPU software version (default by family: v2/v3/v4 tpu-ubuntu2204-base,
                          v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  --spot                  create a Spot slice
  --create_arg=ARG        extra argument for `tpu-vm create` (repeatable), e.g. --create_arg=--network=NET
  --ssh_flag=ARG          extra argument for `tpu-vm ssh/scp` (repeatable), e.g. --ssh_flag=--tunnel-through-iap
  --reuse                 the slice exists: skip describe/create
  --remote_dir DIR        repo location on the workers, relative to the home dir (default: slm_jax);
                          it is deleted and replaced on every launch
  --install MODE          pip (default): PYTHON -m pip install -e . 'jax[tpu]'
                          make: make setup PYTHON=PYTHON, then runs with .venv/bin/python
                          none: skip installing
  --install_cmd CMD       custom install shell command, run in the repo dir on every worker (replaces --install)
  --repo DIR              the repo to copy (default: this script's repo)
  --python PYTHON         python on the workers (default: python3; setup.py needs Python 3.11)
  --env NAME=VALUE        environment variable for slm_jax.main on the workers (repeatable)
  --log FILE              local log file (default: logs/tpu_pod_NAME_DATE.log)
  --delete                delete the slice at the end (also after an error or interruption)
  --stop                  only stop slm_jax.main on all workers (and --delete if given), then exit
  --preflight on|off      compile the train step for --accelerator on this host first and stop, creating
                          nothing, if it does not fit the chips' HBM (default: on; needs libtpu here:
                          pip install -e '.[tpu]'); skipped with --reuse unless --accelerator is given
  --preflight_python PY   python for the pre-flight (default: the repo's .venv/bin/python, else python3)
  --preflight_arg=ARG     extra argument for benchmarks/tpu_compile.py (repeatable), e.g.
                          --preflight_arg=--global_batch=512 --preflight_arg=--steps=train,decode
  --dry-run               print every gcloud command, one per line prefixed with '[dry-run] ', run nothing
  -h, --help              this message

Example:
  launch/tpu_pod.sh --name slm-v4 --zone us-central2-b --accelerator v4-32 \
      --gin_file gin/models/tiny.gin --run_dir gs://my-bucket/slm/run1 --gin.RunConfig.train_steps=2000
EOF
}

# Run a command, or print it in dry-run mode.
run() {
  if (( DRY_RUN )); then
    printf '[dry-run] %s\n' "$(quote_cmd "$@")"
  else
    info "+ $(quote_cmd "$@")"
    "$@"
  fi
}

default_version() {
  case $1 in
    v2-*|v3-*|v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}

# ----------------------------------------------------------------------------- arguments

NAME="" ZONE="" PROJECT="" ACCELERATOR="" VERSION="" LOG="" PYTHON="python3"
REMOTE_DIR="slm_jax" INSTALL="pip" INSTALL_CMD=""
REUSE=0 DELETE=0 STOP=0 SPOT=0
PREFLIGHT=on PREFLIGHT_PY=""
CREATE_ARGS=() SSH_FLAGS=() ENVS=() PREFLIGHT_ARGS=()

parse_flag() {
  case $1 in
    --reuse) REUSE=1 ;;
    --delete) DELETE=1 ;;
    --stop) STOP=1 ;;
    --spot) SPOT=1 ;;
    *) return 1 ;;
  esac
}

parse_option() {
  case $1 in
    --name) NAME=$2 ;;
    --zone) ZONE=$2 ;;
    --project) PROJECT=$2 ;;
    --accelerator) ACCELERATOR=$2 ;;
    --version) VERSION=$2 ;;
    --create_arg) CREATE_ARGS+=("$2") ;;
    --ssh_flag) SSH_FLAGS+=("$2") ;;
    --remote_dir) REMOTE_DIR=$2 ;;
    --install) INSTALL=$2 ;;
    --install_cmd) INSTALL_CMD=$2 ;;
    --repo) REPO=$2 ;;
    --env) ENVS+=("$2") ;;
    --log) LOG=$2 ;;
    --preflight) PREFLIGHT=$2 ;;
    --preflight_python) PREFLIGHT_PY=$2 ;;
    --preflight_arg) PREFLIGHT_ARGS+=("$2") ;;
    *) return 1 ;;
  esac
}

parse_args "$@"

[[ -n $NAME ]] || die "missing required option --name"
[[ -n $ZONE ]] || die "missing required option --zone"
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] || die "--name must be lowercase letters, digits and '-': $NAME"
[[ $REMOTE_DIR =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$ ]] ||
  die "--remote_dir must be a relative path of plain names (no '..', no leading '/' or '.'): $REMOTE_DIR"
resolve_repo
case $INSTALL in pip|make|none) ;; *) die "--install must be pip, make or none, got: $INSTALL" ;; esac
case $PREFLIGHT in on|off) ;; *) die "--preflight must be on or off, got: $PREFLIGHT" ;; esac
check_envs

if (( ! STOP )); then
  require_gin_files
  if (( ! REUSE )); then
    [[ -n $ACCELERATOR ]] || die "missing required option --accelerator (or pass --reuse for an existing slice)"
    if [[ -z $VERSION ]]; then
      VERSION=$(default_version "$ACCELERATOR") ||
        die "no default --version for accelerator $ACCELERATOR; pass --version RUNTIME"
    fi
  fi
  # gin files travel with the repo: they must be files inside it, named relative to its root.
  for i in "${!GIN_FILES[@]}"; do
    f=${GIN_FILES[$i]}
    [[ $f == "$REPO"/* ]] && f=${f#"$REPO"/}
    [[ $f != /* ]] || die "--gin_file must be inside the repo ($REPO): $f"
    [[ -f $REPO/$f ]] || die "--gin_file not found in the repo: $REPO/$f"
    GIN_FILES[i]=$f
  done
  check_run_dir
  if [[ -n $RUN_DIR ]]; then
    [[ $RUN_DIR == gs://* ]] ||
      info "warning: --run_dir $RUN_DIR is local to each worker; multi-host checkpoints need a shared gs:// path"
  fi
fi
[[ -n $LOG ]] || LOG="logs/tpu_pod_${NAME}_$(date +%Y%m%d_%H%M%S).log"

# ----------------------------------------------------------------------------- commands

LOC=(--zone="$ZONE")
[[ -n $PROJECT ]] && LOC+=(--project="$PROJECT")
TPU=(gcloud compute tpus tpu-vm)
SSH=("${TPU[@]}" ssh "$NAME" "${LOC[@]}" --worker=all ${SSH_FLAGS[@]+"${SSH_FLAGS[@]}"})
Q_DIR=$(printf '%q' "$REMOTE_DIR")
PIDFILE=.launch_main.pid  # in the remote repo dir; holds the pid of slm_jax.main on each worker

STAGE=${TMPDIR:-/tmp}/slm_jax_launch_${NAME}/repo
RUN_PY=$PYTHON
if [[ -n $INSTALL_CMD ]]; then
  REMOTE_INSTALL="cd $Q_DIR && $INSTALL_CMD"
elif [[ $INSTALL == pip ]]; then
  REMOTE_INSTALL="cd $Q_DIR && $(quote_cmd "$PYTHON" -m pip install -e . 'jax[tpu]')"
elif [[ $INSTALL == make ]]; then
  REMOTE_INSTALL="cd $Q_DIR && $(quote_cmd make setup PYTHON="$PYTHON") && $(quote_cmd .venv/bin/python -m pip install 'jax[tpu]')"
  RUN_PY=.venv/bin/python
else
  REMOTE_INSTALL=""
fi

main_args
# `exec` keeps the pid written by the remote shell ($$) as the pid of slm_jax.main.
REMOTE_RUN="cd $Q_DIR && echo \$\$ > $PIDFILE && exec $(quote_cmd env PYTHONUNBUFFERED=1 ${ENVS[@]+"${ENVS[@]}"} "$RUN_PY" -m slm_jax.main ${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"})"
# Stop: SIGTERM the recorded pid, only if it still is slm_jax.main.
REMOTE_STOP="pid=\$(cat $Q_DIR/$PIDFILE 2>/dev/null) && grep -qa slm_jax.main /proc/\$pid/cmdline 2>/dev/null && kill -TERM \$pid && echo \"stopped slm_jax.main (pid \$pid) on \$(hostname)\"; true"

DESCRIBE=("${TPU[@]}" describe "$NAME" "${LOC[@]}" --format='value(state)')
CREATE=("${TPU[@]}" create "$NAME" "${LOC[@]}" --accelerator-type="$ACCELERATOR" --version="$VERSION")
(( SPOT )) && CREATE+=(--spot)
CREATE+=(${CREATE_ARGS[@]+"${CREATE_ARGS[@]}"})
CLEAN=("${SSH[@]}" --command="mkdir -p -- $Q_DIR && rm -rf -- $Q_DIR")
SCP=("${TPU[@]}" scp --recurse "$STAGE" "$NAME:$REMOTE_DIR" "${LOC[@]}" --worker=all ${SSH_FLAGS[@]+"${SSH_FLAGS[@]}"})
INSTALL_REMOTE=("${SSH[@]}" --command="$REMOTE_INSTALL")
RUN_REMOTE=("${SSH[@]}" --command="$REMOTE_RUN")
STOP_REMOTE=("${SSH[@]}" --command="$REMOTE_STOP")
DELETE_SLICE=("${TPU[@]}" delete "$NAME" "${LOC[@]}" --quiet)

# Copy the repo's source files (git-tracked plus untracked-but-not-ignored; never .git, .venv, logs/)
# into a clean local staging directory, which is what gets copied to the workers.
stage_repo() {
  rm -rf "$STAGE"
  mkdir -p "$STAGE"
  if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | sort -zu |
      while IFS= read -r -d '' f; do
        if [[ -f $f && $f != logs/* ]]; then printf '%s\0' "$f"; fi
      done | tar --null -T - -cf -) | tar -xf - -C "$STAGE"
  else
    (cd "$REPO" && tar --exclude=./.git --exclude=./.venv --exclude=./logs --exclude='__pycache__' -cf - .) |
      tar -xf - -C "$STAGE"
  fi
}

# ----------------------------------------------------------------------------- actions

DELETED=0
delete_slice() {
  (( DELETE && ! DRY_RUN && ! DELETED )) || return 0
  DELETED=1
  info "deleting slice $NAME"
  run "${DELETE_SLICE[@]}" || info "delete failed; run: $(quote_cmd "${DELETE_SLICE[@]}")"
}

if (( STOP )); then
  run "${STOP_REMOTE[@]}"
  if (( DELETE )); then
    if (( DRY_RUN )); then run "${DELETE_SLICE[@]}"; else delete_slice; fi
  fi
  exit 0
fi

# The pre-flight: the run's train step compiled for the slice on this host, before anything is
# created. benchmarks/tpu_compile.py exits 3 when a step does not fit the chips' HBM.
preflight() {
  [[ $PREFLIGHT == on && -n $ACCELERATOR ]] || return 0
  local topology=${ACCELERATOR/#v5litepod-/v5e-} py=$PREFLIGHT_PY
  if [[ -z $py ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then py=$REPO/.venv/bin/python; else py=python3; fi
  fi
  local cmd=("$py" "$REPO/benchmarks/tpu_compile.py" --topology="$topology" --steps=train)
  local f b
  for f in "${GIN_FILES[@]}"; do cmd+=("--gin_file=$REPO/$f"); done
  for b in ${GIN_BINDINGS[@]+"${GIN_BINDINGS[@]}"}; do cmd+=("$b"); done
  cmd+=(${PREFLIGHT_ARGS[@]+"${PREFLIGHT_ARGS[@]}"})
  if (( DRY_RUN )); then
    printf '[dry-run] %s\n' "$(quote_cmd "${cmd[@]}")"
    return 0
  fi
  info "pre-flight: compiling the train step for $ACCELERATOR ($topology) on this host"
  local rc=0
  "${cmd[@]}" || rc=$?
  case $rc in
    0) info "pre-flight: fits $ACCELERATOR" ;;
    3) die "pre-flight: this config does not fit $ACCELERATOR (table above); nothing was created" ;;
    *) die "pre-flight compile failed (exit $rc); fix it or pass --preflight off" ;;
  esac
}
preflight

(( DRY_RUN )) || trap delete_slice EXIT

if (( ! REUSE )); then
  if (( DRY_RUN )); then
    run "${DESCRIBE[@]}"
    info "(create runs only if describe finds no slice named $NAME)"
    run "${CREATE[@]}"
  elif state=$("${DESCRIBE[@]}" 2>/dev/null); then
    info "reusing existing slice $NAME (state: ${state:-unknown})"
  else
    info "creating slice $NAME ($ACCELERATOR, $VERSION)"
    run "${CREATE[@]}"
  fi
fi

if (( DRY_RUN )); then
  info "(stages the repo's source files into $STAGE)"
else
  info "staging repo files into $STAGE"
  stage_repo
fi
run "${CLEAN[@]}"
run "${SCP[@]}"
[[ -n $REMOTE_INSTALL ]] && run "${INSTALL_REMOTE[@]}"

if (( DRY_RUN )); then
  run "${RUN_REMOTE[@]}"
  info "(on Ctrl-C/SIGTERM it runs the next line to stop slm_jax.main on all workers)"
  run "${STOP_REMOTE[@]}"
  (( DELETE )) && run "${DELETE_SLICE[@]}"
  exit 0
fi

RUN_PID=""
# shellcheck disable=SC2317,SC2329  # invoked by the traps below
on_signal() {  # $1: INT or TERM
  trap - INT TERM
  info "got SIG$1: stopping slm_jax.main on all workers"
  run "${STOP_REMOTE[@]}" || info "stopping failed; run: $(quote_cmd "${STOP_REMOTE[@]}")"
  # Give the workers a moment to save and print their last lines, then end the log stream.
  local i
  for (( i = 0; i < 20; i++ )); do
    kill -0 "$RUN_PID" 2>/dev/null || break
    sleep 0.5
  done
  kill -TERM "$RUN_PID" 2>/dev/null || true
  [[ $1 == INT ]] && exit 130
  exit 143
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

mkdir -p "$(dirname "$LOG")"
info "running slm_jax.main on all workers of $NAME; log: $LOG"
# In the background so that `wait` returns as soon as a signal arrives (the trap then runs).
"${RUN_REMOTE[@]}" > >(tee -a "$LOG") 2>&1 &
RUN_PID=$!
rc=0
wait "$RUN_PID" || rc=$?
info "slm_jax.main finished on $NAME with exit code $rc; log: $LOG"
exit "$rc"
