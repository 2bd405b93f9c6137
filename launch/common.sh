# shellcheck shell=bash
# What the launch scripts share, sourced by each of them (not run on its own): messages, command
# quoting, the argument loop, the checks of the common options, and the slm_jax.main argument list.
#
# The sourcing script sets PROG (its file name) and defines:
#   usage             print the --help text
#   parse_flag ARG    handle a script-specific option without a value (return 1 if ARG is none)
#   parse_option OPT VAL
#                     handle a script-specific option with a value (return 1 if OPT is unknown)
# and initialises PYTHON and its own option variables. This file sets REPO (the repo root, the
# default of --repo) and the common option variables below.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# --dry-run, --run_dir, --gin_file (repeatable) and --gin.NAME=VALUE (repeatable).
DRY_RUN=0 RUN_DIR=""
GIN_FILES=() GIN_BINDINGS=()

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  printf "Run 'launch/%s --help' for usage.\n" "$PROG" >&2
  exit 2
}
info() { printf '%s: %s\n' "$PROG" "$*" >&2; }

# One shell-quoted command line (printf %q for every word): what --dry-run prints, copy-pasteable.
quote_cmd() {
  local out="" w
  for w in "$@"; do out+="${out:+ }$(printf '%q' "$w")"; done
  printf '%s' "$out"
}

# ----------------------------------------------------------------------------- arguments

# Options are `--opt VALUE` or `--opt=VALUE`; --gin.NAME=VALUE bindings are kept as they are.
# shellcheck disable=SC2034  # DRY_RUN is read by the sourcing script
parse_args() {
  local arg opt val
  while (( $# )); do
    arg=$1
    case $arg in
      -h|--help) usage; exit 0 ;;
      --dry-run|--dry_run) DRY_RUN=1; shift; continue ;;
      --gin.*=*) GIN_BINDINGS+=("$arg"); shift; continue ;;
      --gin.*) die "gin binding needs a value: $arg (use --gin.NAME=VALUE)" ;;
    esac
    if parse_flag "$arg"; then shift; continue; fi
    case $arg in
      --*=*) opt=${arg%%=*} val=${arg#*=}; shift ;;
      --*)
        opt=$arg
        [[ $# -ge 2 && $2 != -* ]] || die "option $opt needs a value (use $opt=VALUE for values starting with '-')"
        val=$2; shift 2 ;;
      *) die "unexpected argument: $arg" ;;
    esac
    case $opt in
      --gin_file) GIN_FILES+=("$val") ;;
      --run_dir) RUN_DIR=$val ;;
      --python) PYTHON=$val ;;
      *) parse_option "$opt" "$val" || die "unknown option: $opt" ;;
    esac
  done
}

require_gin_files() {
  (( ${#GIN_FILES[@]} )) || die "missing required option --gin_file"
}

# --run_dir goes into a single-quoted gin string.
check_run_dir() {
  if [[ -n $RUN_DIR ]]; then
    [[ $RUN_DIR != *"'"* && $RUN_DIR != *\\* ]] || die "--run_dir must not contain quotes or backslashes: $RUN_DIR"
  fi
}

# --repo must be a directory; REPO becomes its absolute path.
resolve_repo() {
  [[ -d $REPO ]] || die "--repo is not a directory: $REPO"
  REPO=$(cd "$REPO" && pwd)
}

# ENVS: the values of the repeatable --env NAME=VALUE.
check_envs() {
  local e
  for e in ${ENVS[@]+"${ENVS[@]}"}; do
    [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env needs NAME=VALUE, got: $e"
  done
}

# Without --python: the repo's .venv python if there is one, else python3.
default_python() {
  if [[ -z $PYTHON ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
  fi
}

# MAIN_ARGS: the arguments of slm_jax.main (--gin_file=F..., --gin.RunConfig.run_dir='DIR', the bindings).
main_args() {
  local f
  MAIN_ARGS=()
  for f in ${GIN_FILES[@]+"${GIN_FILES[@]}"}; do MAIN_ARGS+=("--gin_file=$f"); done
  if [[ -n $RUN_DIR ]]; then MAIN_ARGS+=("--gin.RunConfig.run_dir='$RUN_DIR'"); fi
  MAIN_ARGS+=(${GIN_BINDINGS[@]+"${GIN_BINDINGS[@]}"})
}
