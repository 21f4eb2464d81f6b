#!/usr/bin/env bash
# One-shot check on a machine with one GPU (e.g. one H100, 16 cores, no internet), run from the repo root:
#
#     OUT=/some/folder bash bench/gpu_check.sh
#
# The repo's .venv is NOT used there (it is a CPU build for another machine): everything runs with the
# system python ($PYTHON, default python3), which must already have torch with CUDA. Pure-Python wheels found
# in .whl/ (e.g. array-api-compat, which the device image lacks) are installed into /tmp/site first; other
# missing modules are only reported. Steps, each under `timeout`, all within a 480 s overall deadline:
#
#   1. which of torch, h5py, sklearn, array_api_compat, scipy, tqdm, yaml, pytest import (and the GPU seen);
#   2. the CPU tests that cover the GPU-relevant code (backend, Lanczos, SLQ) must still pass there;
#   3. bench/slq_overhead.py --device cuda        -> $OUT/slq_overhead_cuda.json (kept gradient graphs), and
#      for LeNet with --hvp-memory-mb 0           -> $OUT/slq_overhead_cuda_recomputed.json
#   4. bench/grid_point_cost.py --device cuda     -> $OUT/grid_point_cost_cuda.json
#   5. bench/gpu_steps.py: the step modules with --device cuda against --device cpu on one trajectory
#
# STEPS (default "imports pytest slq grid steps") picks which of them run, e.g. STEPS="imports pytest slq".
# Each bench writes its JSON after every model, so a step cut by its timeout still leaves what finished.
# Logs go to $OUT/*.log; a summary with every step's exit status is printed last and kept in $OUT/summary.txt.
set -u

PY=${PYTHON:-python3}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE=$((START + ${DEADLINE_S:-480}))
THREADS=4
STEPS=${STEPS:-imports pytest slq grid steps}
declare -a SUMMARY=()

remaining() { echo $((DEADLINE - $(date +%s))); }

# run NAME BUDGET_S CMD...: run CMD under timeout min(BUDGET_S, time left), log to $OUT/NAME.log
run() {
    local name=$1 budget=$2
    shift 2
    case " $STEPS " in
        *" ${name%%_*} "*) ;;
        *) SUMMARY+=("$name: not selected (STEPS)"); return ;;
    esac
    local left
    left=$(remaining)
    if [ "$left" -lt 10 ]; then
        SUMMARY+=("$name: SKIPPED (overall deadline reached)")
        return
    fi
    [ "$budget" -gt "$left" ] && budget=$left
    echo "=== $name (timeout ${budget}s): $*"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=5 "$budget" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    local took=$(( $(date +%s) - t0 ))
    case $rc in
        0) SUMMARY+=("$name: ok (${took}s)") ;;
        124|137) SUMMARY+=("$name: TIMED OUT after ${took}s (rc $rc)") ;;
        *) SUMMARY+=("$name: FAILED rc=$rc (${took}s)") ;;
    esac
}

if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

echo "=== environment"
echo "python: $(command -v "$PY") ($($PY --version 2>&1))"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4
fi

# 1. imports: report each missing module, install nothing
run imports 30 "$PY" - <<'EOF'
import importlib
missing = []
for name in ("torch", "h5py", "sklearn", "array_api_compat", "scipy", "tqdm", "yaml", "numpy", "pytest"):
    try:
        mod = importlib.import_module(name)
        print(f"ok       {name} {getattr(mod, '__version__', '')}")
    except Exception as error:  # noqa: BLE001 - report anything that stops the import
        missing.append(name)
        print(f"MISSING  {name}: {type(error).__name__}: {error}")
try:
    import torch
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, "
          f"devices: {[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}")
except Exception as error:  # noqa: BLE001
    print(f"torch/CUDA query failed: {error}")
print("missing:", " ".join(missing) if missing else "none")
raise SystemExit(1 if missing else 0)
EOF

# 2. CPU tests of the code the GPU runs (they must pass on this machine too)
run pytest 100 "$PY" -m pytest tests/test_cuda.py tests/test_lanczos_graphs.py tests/test_lanczos.py \
    tests/test_slq.py tests/test_torch_backend.py -q -p no:cacheprovider -rs

# 3-4. the two device benches (defaults for cuda: ResNet-20 on synthetic CIFAR-shaped data; ResNet-20, at
# ~70 ms per HVP on 256 samples, runs 2 x 20 and its overhead at 10 x 80 is predicted, as on the CPU)
run slq_overhead_cuda 220 "$PY" bench/slq_overhead.py --device cuda --threads "$THREADS" --repeats 3 \
    --resnet-k 2 --resnet-m 20 --resnet-samples 256 --mode-repeats 4 --json "$OUT/slq_overhead_cuda.json"
# the same for LeNet with every HVP recomputed (no kept gradient graphs), the HVP the earlier H100 figures used
run slq_recomputed_cuda 80 "$PY" bench/slq_overhead.py --device cuda --threads "$THREADS" --repeats 2 \
    --models lenet --no-predict --hvp-memory-mb 0 --mode-repeats 4 --json "$OUT/slq_overhead_cuda_recomputed.json"
run grid_point_cost_cuda 60 "$PY" bench/grid_point_cost.py --device cuda --threads "$THREADS" \
    --resnet-samples 512 --rounds 8 --json "$OUT/grid_point_cost_cuda.json"

run steps_gpu 90 "$PY" bench/gpu_steps.py --out /tmp/gpu_steps

echo
echo "=== summary ($(( $(date +%s) - START ))s in all; JSON and logs in $OUT)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
