#!/usr/bin/env bash
# Run slm_jax on this machine as N cooperating processes (a multi-host run in miniature): process i
# gets SLM_COORDINATOR_ADDRESS=localhost:PORT, SLM_NUM_PROCESSES=N, SLM_PROCESS_ID=i, from which
# slm_jax.main calls jax.distributed.initialize(). With --devices_per_process K each process
# simulates K CPU devices. Process 0 prints to the terminal, the others to log files. The launcher
# waits for all processes; if one fails it stops the others and exits with that process's code.
set -euo pipefail

PROG=local.sh
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/local.sh --gin_file FILE [options] [--gin.X=Y ...]

Run `python -m slm_jax.main --gin_file=... --gin.X=Y ...` as N local processes.

Required:
  --gin_file FILE           gin file (repeatable), relative to the current directory
Options:
  --gin.NAME=VALUE          gin binding passed through unchanged (repeatable)
  --run_dir DIR             adds --gin.RunConfig.run_dir='DIR'
  --processes N             number of processes (default: 1; with 1, no SLM_* variables are set)
  --devices_per_process K   simulate K CPU devices per process (sets JAX_PLATFORMS=cpu and
                            XLA_FLAGS=--xla_force_host_platform_device_count=K)
  --port PORT               coordinator port on localhost (default: 23456)
  --python PYTHON           python to run (default: REPO/.venv/bin/python if it exists, else python3)
  --log_dir DIR             logs of processes 1..N-1 (default: logs/local_DATE)
  --dry-run                 print the command of every process, one per line prefixed with '[dry-run] '
  -h, --help                this message

Example (2 processes x 4 simulated CPU devices = an 8-device mesh):
  launch/local.sh --processes 2 --devices_per_process 4 --gin_file gin/models/tiny.gin --run_dir runs/local
EOF
}

# ----------------------------------------------------------------------------- arguments

PROCESSES=1 DEVICES="" PORT=23456 PYTHON="" LOG_DIR=""

parse_flag() { return 1; }  # none

parse_option() {
  case $1 in
    --processes) PROCESSES=$2 ;;
    --devices_per_process) DEVICES=$2 ;;
    --port) PORT=$2 ;;
    --log_dir) LOG_DIR=$2 ;;
    *) return 1 ;;
  esac
}

parse_args "$@"
require_gin_files
[[ $PROCESSES =~ ^[1-9][0-9]*$ ]] || die "--processes must be a positive integer, got: $PROCESSES"
[[ -z $DEVICES || $DEVICES =~ ^[1-9][0-9]*$ ]] || die "--devices_per_process must be a positive integer, got: $DEVICES"
[[ $PORT =~ ^[1-9][0-9]*$ && $PORT -lt 65536 ]] || die "--port must be a TCP port number, got: $PORT"
for f in "${GIN_FILES[@]}"; do [[ -f $f ]] || die "--gin_file not found: $f"; done
check_run_dir
default_python
[[ -n $LOG_DIR ]] || LOG_DIR="logs/local_$(date +%Y%m%d_%H%M%S)"

main_args
MAIN=("$PYTHON" -m slm_jax.main "${MAIN_ARGS[@]}")

# The command of process $1, as words: env VAR=... python -m slm_jax.main ...
process_cmd() {
  CMD=(env)
  if (( PROCESSES > 1 )); then
    CMD+=(SLM_COORDINATOR_ADDRESS="localhost:$PORT" SLM_NUM_PROCESSES="$PROCESSES" SLM_PROCESS_ID="$1")
  fi
  if [[ -n $DEVICES ]]; then
    CMD+=(JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES")
  fi
  CMD+=("${MAIN[@]}")
}

if (( DRY_RUN )); then
  for (( i = 0; i < PROCESSES; i++ )); do
    process_cmd "$i"
    printf '[dry-run] %s\n' "$(quote_cmd "${CMD[@]}")"
  done
  (( PROCESSES > 1 )) && info "(process 0 prints here; processes 1..$(( PROCESSES - 1 )) write to $LOG_DIR/process_I.log)"
  exit 0
fi

if (( PROCESSES == 1 )); then
  process_cmd 0
  info "+ $(quote_cmd "${CMD[@]}")"
  exec "${CMD[@]}"
fi

# ----------------------------------------------------------------------------- N processes

mkdir -p "$LOG_DIR"
PIDS=()
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do
    if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  wait 2>/dev/null || true
}
# shellcheck disable=SC2317,SC2329  # invoked by the traps below
on_signal() {
  trap - INT TERM
  info "got SIG$1: stopping all processes"
  stop_all
  [[ $1 == INT ]] && exit 130
  exit 143
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

for (( i = 0; i < PROCESSES; i++ )); do
  process_cmd "$i"
  info "+ $(quote_cmd "${CMD[@]}")"
  if (( i == 0 )); then
    "${CMD[@]}" &
  else
    "${CMD[@]}" > "$LOG_DIR/process_$i.log" 2>&1 &
  fi
  PIDS+=("$!")
done
info "started $PROCESSES processes (coordinator localhost:$PORT); logs of processes 1..: $LOG_DIR"

# Poll (portable: no `wait -n`): a finished process is reaped by `wait PID`, which gives its code.
running=$PROCESSES
while (( running > 0 )); do
  for i in "${!PIDS[@]}"; do
    pid=${PIDS[$i]}
    [[ -n $pid ]] || continue
    kill -0 "$pid" 2>/dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    PIDS[i]=""
    running=$(( running - 1 ))
    if (( rc != 0 )); then
      info "process $i failed with exit code $rc; stopping the others"
      if (( i > 0 )); then
        info "last lines of $LOG_DIR/process_$i.log:"
        tail -n 20 "$LOG_DIR/process_$i.log" >&2 || true
      fi
      stop_all
      exit "$rc"
    fi
  done
  if (( running > 0 )); then sleep 0.2; fi
done
info "all $PROCESSES processes finished"
