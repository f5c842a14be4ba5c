#!/usr/bin/env bash
# Build and install Horovod 0.28.1 (PyTorch + MPI + Gloo controllers) into a virtual environment:
#   bash launch/install_horovod.sh [VENV]          (default VENV: .venv next to this repository)
#
# Horovod is dormant upstream (last release 0.28.1, 2023) but still builds against torch 2.13
# with three adjustments (README.md, "Horovod"):
#   1. its extension asks for C++14 while torch >= 2.1 headers need C++17: CXX is a small wrapper
#      that rewrites -std=c++14 / -std=c++11 to -std=c++17 (torch >= 2.14 would need C++20);
#   2. CMake >= 4 refuses the bundled gloo's old cmake_minimum_required:
#      CMAKE_POLICY_VERSION_MINIMUM=3.5 (harmless with the system CMake 3.25);
#   3. --no-build-isolation, so that it compiles against the torch and MPI already in VENV, with
#      its build dependencies installed first.
# MPI is the venv's MPICH (pip package `mpich`: mpicc/mpicxx/mpiexec in VENV/bin); on a cluster,
# put the site MPI's compiler wrappers first on PATH instead.
#
# Idempotent: exits at once when `import horovod.torch` already works. The build takes 3 to 8
# minutes on 2 cores; the built wheel is cached under ~/.cache/hpcflow/wheels/, keyed by torch
# version, Python version and MPI library, and a re-created venv installs it in seconds.
# Ends with `horovodrun --check-build`, which must list PyTorch, MPI and Gloo.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$here/.venv}"
if [[ ! -d "$venv" ]]; then
  echo "install_horovod.sh: no virtual environment at $venv (create it first: make install)" >&2
  exit 2
fi
venv="$(cd "$venv" && pwd)"
py="$venv/bin/python"
if [[ ! -x "$py" ]]; then
  echo "install_horovod.sh: no python in $venv/bin (create the venv first: make install)" >&2
  exit 2
fi

if "$py" -c 'import horovod.torch' 2>/dev/null; then
  echo "install_horovod.sh: horovod.torch already importable in $venv"
  "$venv/bin/horovodrun" --check-build
  exit 0
fi

# A CUDA build of torch on a machine without the CUDA toolkit stops Horovod's CMake
# ("Could NOT find CUDAToolkit"): say so before spending minutes on it.
if "$py" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' \
   && ! command -v nvcc >/dev/null; then
  echo "install_horovod.sh: warning: torch is a CUDA build but nvcc is not on PATH;" \
       "Horovod's CMake will likely fail (build against the CPU torch, or load CUDA)" >&2
fi

if ! "$py" -c 'import torch' 2>/dev/null; then
  echo "install_horovod.sh: torch is not importable in $venv; install it first" \
       "(make install: torch==2.13.0 CPU)" >&2
  exit 2
fi

pip=("$py" -m pip install --disable-pip-version-check)
# Build dependencies first: with --no-build-isolation pip does not install them itself.
"${pip[@]}" packaging cloudpickle psutil pyyaml cffi setuptools wheel

# MPI: the compiler wrappers CMake's FindMPI sees first on PATH. The venv's own (pip package
# mpich) come first; on a cluster, load the site MPI module before running this script. Only
# where no MPI exists at all is the mpich wheel installed (it would shadow a site MPI).
export PATH="$venv/bin:$PATH"
if ! command -v mpicxx >/dev/null || ! command -v mpicc >/dev/null; then
  echo "install_horovod.sh: no mpicc/mpicxx on PATH; installing the mpich wheel into $venv"
  "${pip[@]}" mpich
fi
"$py" -c 'import mpi4py' 2>/dev/null || "${pip[@]}" mpi4py
echo "install_horovod.sh: MPI compiler wrapper $(command -v mpicxx)"

# C++17 wrapper (adjustment 1). It lives in a temporary folder that outlives the build only
# until this script exits.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
real_cxx="${HOROVOD_REAL_CXX:-$(command -v g++ || command -v c++)}"
cat >"$work/cxx17" <<EOF
#!/usr/bin/env bash
# Forward to $real_cxx with any C++11/14 standard flag raised to C++17 (torch headers need it).
args=()
for a in "\$@"; do
  case "\$a" in
    -std=c++11|-std=c++14|-std=gnu++11|-std=gnu++14) args+=("-std=c++17") ;;
    *) args+=("\$a") ;;
  esac
done
exec "$real_cxx" "\${args[@]}"
EOF
chmod +x "$work/cxx17"

export CXX="$work/cxx17"
export CC="${HOROVOD_REAL_CC:-$(command -v gcc || command -v cc)}"
export CMAKE_POLICY_VERSION_MINIMUM=3.5          # adjustment 2
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_MPI=1 HOROVOD_WITH_GLOO=1
export HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
# Both cores (or more) for the compile; Horovod's setup.py passes this to CMake's build step.
export MAKEFLAGS="-j$(nproc)"

# The built wheel is cached, keyed by the torch version, the Python version and the MPI library
# it was built against: a re-created venv (make clean; make test) installs it in seconds
# instead of rebuilding. HOROVOD_REBUILD=1 forces a build.
torch_version="$("$py" -c 'import torch; print(torch.__version__)')"
py_tag="$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
mpi_version="$("$py" -c 'from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])')"
mpi_key="$(printf '%s' "$mpi_version" | sha1sum | cut -c1-8)"
wheels="${XDG_CACHE_HOME:-$HOME/.cache}/hpcflow/wheels"
cache="$wheels/horovod-0.28.1-torch${torch_version}-${py_tag}-mpi${mpi_key}"
wheel="$(ls "$cache"/horovod-0.28.1-*.whl 2>/dev/null | head -n 1 || true)"

if [[ -n "$wheel" && -z "${HOROVOD_REBUILD:-}" ]]; then
  echo "install_horovod.sh: installing the cached wheel $wheel ($mpi_version)"
  "${pip[@]}" --no-deps "$wheel"
else
  echo "install_horovod.sh: building horovod==0.28.1 into $venv (several minutes on 2 cores)"
  start=$SECONDS
  mkdir -p "$cache"
  "$py" -m pip wheel --disable-pip-version-check --no-deps --no-build-isolation --verbose \
    -w "$work/wheel" horovod==0.28.1 >"$work/build.log" 2>&1 || {
      echo "install_horovod.sh: build failed; last lines of the log:" >&2
      tail -n 60 "$work/build.log" >&2
      exit 1
    }
  echo "install_horovod.sh: built in $(( SECONDS - start )) s; cached in $cache"
  cp "$work"/wheel/horovod-0.28.1-*.whl "$cache"/
  "${pip[@]}" --no-deps "$work"/wheel/horovod-0.28.1-*.whl
fi

"$py" -c 'import horovod, horovod.torch; print("horovod", horovod.__version__, "imports")'
"$venv/bin/horovodrun" --check-build
