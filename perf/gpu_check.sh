#!/usr/bin/env bash
# The accelerator check of hpcflow on ONE NVIDIA GPU, within 8 minutes:
#
#   1. the tests marked `gpu` (pytest -m gpu: CUDA equals CPU, device placement, TF32 policy);
#   2. perf/bench_flow.py      flow sampling / training passes, samples per second;
#   3. perf/bench_conv.py      4D convolutions of the context networks;
#   4. perf/bench_sampling.py  proposals per second, with and without HDF5 writing (1 rank);
#   5. perf/train_quality.py   training throughput and ESS within a one-minute budget;
#
# each under its own `timeout`, so that one hang cannot eat the slot, and each skipped when the
# overall budget (GPU_CHECK_BUDGET seconds, default 450) has no room left for it (per-step
# limits: GPU_CHECK_LIMITS="conv=30 train=200" overrides the defaults below). Logs and JSON
# go to ${OUT:-perf/out/gpu}; a summary table ends the output (and summary.tsv/summary.json).
# Not run: perf/bench_scaling.py and perf/bench_allreduce.py (two ranks: NCCL refuses two
# ranks on one GPU), perf/bench_hmc.py, bench_updates.py and the others (CPU-sized studies).
#
#   bash perf/gpu_check.sh                        # on the GPU machine
#   GPU_CHECK_DEVICE=cpu bash perf/gpu_check.sh   # the same logic on a CPU, tiny sizes
#
# Python: GPU_CHECK_PYTHON if set, else the first of .venv/bin/python, .venv-gpu/bin/python,
# python3, python whose torch sees CUDA (a machine without network keeps its own torch). If
# none has one, .venv-gpu is made and torch==2.13.0 installed from PyPI (CUDA wheels; needs
# network). Missing pure-Python dependencies are installed into .venv-gpu (with
# --system-site-packages, keeping the machine's torch) when pip can reach an index; hpcflow
# itself is used from this checkout (PYTHONPATH), not installed; GPU_CHECK_INSTALL=0 installs
# nothing. GPU_CHECK_TF32=1 benchmarks with TF32 allowed (default: hpcflow's policy, full
# float32). Exit status: 0 when every step passed, 1 otherwise (a skipped step included).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BUDGET=${GPU_CHECK_BUDGET:-450}
TF32=${GPU_CHECK_TF32:-0}
INSTALL=${GPU_CHECK_INSTALL:-1}
OUT=${OUT:-perf/out/gpu}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
RESERVE=10  # seconds kept for the summary
SUMMARY="$OUT/summary.tsv"
printf 'step\tstatus\tseconds\tnote\n' > "$SUMMARY"

case "$DEVICE" in
    cuda)  # sizes for one large GPU
        FLOW_ARGS=(--configs configs/u1_2d.yaml configs/u1_4d.yaml configs/su3_4d.yaml
                   --batch 64 --repeats 5)
        CONV_ARGS=(--variants ours,per_kernel_slice,cp_r8 --repeats 5 --warmup 2)
        SAMPLING_ARGS=(--configs configs/u1_2d.yaml configs/u1_4d.yaml configs/su3_4d.yaml
                       --n 4096 --batch 512)
        TRAIN_ARGS=(--config configs/su3_4d.yaml --minutes 1 --eval 1024)
        LIMITS=(pytest=150 flow=70 conv=90 sampling=70 train=130) ;;
    cpu)   # the dry run: the same steps, tiny sizes
        FLOW_ARGS=(--configs configs/u1_2d.yaml --batch 4 --repeats 1 --threads 1)
        CONV_ARGS=(--variants ours --repeats 1 --warmup 0 --threads 1)
        SAMPLING_ARGS=(--configs configs/u1_2d.yaml --n 64 --batch 32)
        TRAIN_ARGS=(--config configs/u1_2d.yaml --minutes 0.15 --eval 64 --threads 1
                    --set train.batch_size=8 --set train.eval_every=0
                    --set train.pretrain.steps=3)  # its first stage on 4x4, shortened
        LIMITS=(pytest=120 flow=60 conv=60 sampling=60 train=60) ;;
    *) echo "gpu_check: GPU_CHECK_DEVICE must be cuda or cpu, not $DEVICE" >&2; exit 2 ;;
esac
read -ra EXTRA_LIMITS <<< "${GPU_CHECK_LIMITS:-}"  # e.g. "conv=30 train=200": override
LIMITS+=("${EXTRA_LIMITS[@]}")
limit_of() {  # the last limit given for step $1
    local kv limit=
    for kv in "${LIMITS[@]}"; do [[ ${kv%%=*} == "$1" ]] && limit=${kv#*=}; done
    echo "$limit"
}

record() {  # record STEP STATUS SECONDS NOTE
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$SUMMARY"
}

# step NAME NOTE COMMAND...: run COMMAND with the step's time limit (cut to what the budget has
# left), output to $OUT/NAME.log; a time-out kills its whole process group (timeout(1) does).
step() {
    local name=$1 note=$2 limit left t0 rc=0 status
    shift 2
    limit=$(limit_of "$name")
    left=$(( BUDGET - SECONDS - RESERVE ))
    if (( left < 20 )); then
        echo "== $name: skipped, ${left}s left of the ${BUDGET}s budget"
        record "$name" skipped 0 "budget spent"
        return
    fi
    (( limit > left )) && limit=$left
    local shown=("$@")  # BENCH's inline program shown by what it does
    [[ ${shown[1]:-} == -c ]] && shown=("$1" "[policy tf32=$TF32]" "${shown[@]:4}")
    echo "== $name (at most ${limit}s): ${shown[*]}"
    t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
    case $rc in
        0) status=ok ;;
        124|137) status=timeout; note="killed after ${limit}s; $note" ;;
        *) status="FAIL($rc)" ;;
    esac
    echo "   $status in $(( SECONDS - t0 ))s (log: $OUT/$name.log)"
    [[ $status == ok ]] || tail -n 15 "$OUT/$name.log" | sed 's/^/   | /'
    record "$name" "$status" $(( SECONDS - t0 )) "$note"
}

# ------------------------------------------------------------------------------- the Python
torch_ok() {  # torch_ok PYTHON: torch imports (and sees CUDA when the check is for cuda)
    [[ -x $1 ]] || command -v "$1" > /dev/null 2>&1 || return 1
    timeout 120 "$1" -c "
import sys, torch
sys.exit(0 if '$DEVICE' == 'cpu' or torch.cuda.is_available() else 1)" > /dev/null 2>&1
}

missing_modules() {  # missing_modules PYTHON: the packages hpcflow and its tests need, absent
    timeout 120 "$1" - <<'PYEOF' 2>/dev/null
import importlib.util
need = {"numpy": "numpy", "scipy": "scipy", "yaml": "pyyaml", "h5py": "h5py", "tqdm": "tqdm",
        "pytest": "pytest", "mpi4py": "mpi4py"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PYEOF
}

pip_install() {  # pip_install PACKAGE...: into $PY, quietly, bounded in time
    timeout 240 "$PY" -m pip install --quiet --disable-pip-version-check "$@" \
        >> "$OUT/setup.log" 2>&1
}

choose_python() {  # sets PY
    local candidate
    for candidate in ${GPU_CHECK_PYTHON:-} .venv/bin/python .venv-gpu/bin/python python3 python; do
        if torch_ok "$candidate"; then PY=$candidate; return 0; fi
    done
    [[ $INSTALL == 1 ]] || return 1
    echo "no Python here has a torch that sees $DEVICE: making .venv-gpu with torch==2.13.0"
    PY=.venv-gpu/bin/python
    timeout 60 python3 -m venv .venv-gpu >> "$OUT/setup.log" 2>&1 && pip_install torch==2.13.0 \
        && torch_ok "$PY" && return 0
    PY=
    return 1
}

setup() {
    local t0=$SECONDS missing core base
    : > "$OUT/setup.log"
    if ! choose_python; then
        echo "gpu_check: no Python with a torch for $DEVICE, and none could be installed" \
            "(no network?); see $OUT/setup.log" | tee -a "$OUT/setup.log"
        record setup FAIL $(( SECONDS - t0 )) "no Python with a torch for $DEVICE"
        return 1
    fi
    missing=$(missing_modules "$PY")
    if [[ -n $missing && $INSTALL == 1 ]]; then
        echo "$PY lacks: $missing; installing into .venv-gpu (needs a package index)" \
            | tee -a "$OUT/setup.log"
        base=$PY
        if [[ $PY != .venv-gpu/bin/python ]]; then  # keep the machine's torch: system packages
            timeout 60 "$base" -m venv --system-site-packages .venv-gpu >> "$OUT/setup.log" 2>&1 \
                && PY=.venv-gpu/bin/python
        fi
        core=$(tr ' ' '\n' <<< "$missing" | grep -vx mpi4py | tr '\n' ' ')
        # shellcheck disable=SC2086  # lists of package names
        [[ -z ${core// } ]] || pip_install $core || echo "   pip failed for: $core"
        # mpi4py needs an MPI library: the mpich wheel brings one (only bench_sampling needs it)
        [[ $missing != *mpi4py* ]] || pip_install mpich mpi4py || echo "   pip failed: mpi4py"
        torch_ok "$PY" || PY=$base  # a broken venv: back to the Python that had torch
        missing=$(missing_modules "$PY")
    fi
    "$PY" - <<'PYEOF' 2>&1 | tee -a "$OUT/setup.log"
import sys
import torch
names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(f"python {sys.executable}: torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"devices {names}")
PYEOF
    timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
        >> "$OUT/setup.log" 2>&1 || true
    record setup ok $(( SECONDS - t0 )) "$PY${missing:+; missing: $missing}"
}

# ---------------------------------------------------------------------------------- the steps
echo "gpu_check: device $DEVICE, budget ${BUDGET}s, output $OUT"
if setup; then
    # The benchmarks build their models directly, not through a command that sets hpcflow's
    # float32 policy: BENCH sets it (GPU_CHECK_TF32), then runs the script as __main__.
    BENCH=("$PY" -c "
import runpy, sys
from hpcflow.distributed import set_float32_precision
set_float32_precision(sys.argv[1] == '1')
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name='__main__')" "$TF32")
    if [[ $TF32 == 1 ]]; then TF32_BOOL=true; else TF32_BOOL=false; fi
    mapfile -t GPU_TESTS < <(grep -rlE "pytest\.mark\.gpu" tests --include='test_*.py' | sort)
    # the files by name, not tests/: a file that fails to import here (a missing optional
    # package) must not stop the others (tests/conftest.py checks the whole suite only)
    step pytest "${#GPU_TESTS[@]} files with gpu tests" "$PY" -m pytest -q -rs -m gpu \
        -p no:cacheprovider --continue-on-collection-errors \
        --junitxml="$OUT/pytest-gpu.xml" "${GPU_TESTS[@]}"
    step flow "bench_flow.json" "${BENCH[@]}" perf/bench_flow.py --device "$DEVICE" \
        "${FLOW_ARGS[@]}" --out "$OUT/bench_flow.json"
    step conv "bench_conv.json" "${BENCH[@]}" perf/bench_conv.py --device "$DEVICE" \
        "${CONV_ARGS[@]}" --out "$OUT/bench_conv.json"
    if "$PY" -c "import mpi4py, h5py" > /dev/null 2>&1; then
        step sampling "bench_sampling.json" "${BENCH[@]}" perf/bench_sampling.py \
            --device "$DEVICE" --ranks 1 "${SAMPLING_ARGS[@]}" --out "$OUT/bench_sampling.json"
    else
        record sampling skipped 0 "needs mpi4py and h5py (its worker runs under mpi4py)"
    fi
    step train "quality/quality.json" "$PY" perf/train_quality.py "${TRAIN_ARGS[@]}" \
        --set "distributed.device=$DEVICE" --set "distributed.tf32=$TF32_BOOL" \
        --set train.plot=false --out-dir "$OUT/quality"
    rm -rf "$OUT/quality/run/checkpoints"  # the JSON and the metrics are the result
fi

# -------------------------------------------------------------------------------- the summary
echo
echo "gpu_check summary (device $DEVICE, ${SECONDS}s of ${BUDGET}s; logs and JSON in $OUT):"
column -t -s $'\t' "$SUMMARY" 2>/dev/null || cat "$SUMMARY"
if [[ -f $OUT/pytest.log ]]; then
    grep -E "(passed|failed|skipped|error)" "$OUT/pytest.log" | tail -n 1 | sed 's/^/pytest: /'
fi
if [[ -n ${PY:-} ]]; then
    "$PY" - "$SUMMARY" "$OUT/summary.json" "$DEVICE" "$SECONDS" <<'PYEOF' || true
import csv, json, sys
with open(sys.argv[1]) as f:
    rows = list(csv.DictReader(f, delimiter="\t"))
with open(sys.argv[2], "w") as f:
    json.dump({"device": sys.argv[3], "seconds": int(sys.argv[4]), "steps": rows}, f, indent=1)
PYEOF
fi
# exit 0 only when every step is "ok" (a skipped step counts as not done)
awk -F'\t' 'NR > 1 && $2 != "ok" { bad = 1 } END { exit bad }' "$SUMMARY"
