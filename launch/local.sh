#!/usr/bin/env bash
# Run an hpcflow command on this machine under MPI:
#   launch/local.sh [-n RANKS] [--dry-run] COMMAND ARGS...
# e.g. launch/local.sh -n 2 check configs/demo.yaml
# Uses .venv's mpiexec (the mpich wheel) when present, else the one on PATH. Each rank gets one
# share of the cores for torch's threads unless OMP_NUM_THREADS is already set.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
ranks=2
dry=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) ranks="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) break ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "usage: launch/local.sh [-n RANKS] [--dry-run] COMMAND ARGS..." >&2
  exit 2
fi
py="$here/.venv/bin/python"; [[ -x "$py" ]] || py="$(command -v python3)"
mpiexec="$here/.venv/bin/mpiexec"; [[ -x "$mpiexec" ]] || mpiexec="$(command -v mpiexec)"
cores=$(nproc)
threads=$(( cores / ranks )); (( threads >= 1 )) || threads=1
cmd=(env "OMP_NUM_THREADS=${OMP_NUM_THREADS:-$threads}" "$mpiexec" -n "$ranks" "$py" -m mpi4py -m hpcflow "$@")
if (( dry )); then
  printf '%q ' "${cmd[@]}"; echo
else
  exec "${cmd[@]}"
fi
