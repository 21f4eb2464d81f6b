#!/usr/bin/env bash
# One-shot check on a machine with one GPU (e.g. one H200, 16 cores, no internet), run from the repo root:
#
#     OUT=/some/folder bash bench/gpu_check.sh
#
# The repo's .venv is NOT used there (it is a CPU build for another machine): everything runs with the
# system python ($PYTHON, default python3), which must already have torch with CUDA. Wheels found in .whl/
# (pyhessian, array-api-compat, ffmpeg-python, future, imageio-ffmpeg: the device image lacks them; how to make
# the folder: bench/README.md) are installed into /tmp/site first; other missing modules are only reported.
# Steps, each under `timeout`, all within one overall deadline (DEADLINE_S, default 480 s):
#
#   imports    which of torch, h5py, sklearn, array_api_compat, scipy, tqdm, yaml, pyhessian, ffmpeg,
#              imageio_ffmpeg import (and the GPU seen);
#   pyhessian  bench/pyhessian_compare.py --device cuda: LeNet (10,000 synthetic CIFAR-shaped samples, batches of
#              1000; 140 s) and ResNet-20 (1024 samples, batches of 512; PyHessian's SLQ timed on k=1 and scaled;
#              160 s), k=10, m=80                                -> $OUT/pyhessian_lenet_cuda.json, $OUT/pyhessian_resnet20_cuda.json
#   paper      bench/paper_3_3.py --device cuda: the paper's section 3.3 end to end (50,000 samples, 197
#              checkpoints, 50x50 grid, SLQ 10x80 on PAPER_CHECKPOINTS of them, default 24, projected to all;
#              its own deadline inside this step's budget)                     -> $OUT/paper_3_3_cuda.json
#   grid       bench/grid_batched.py --device cuda when that file is there, else bench/grid_point_cost.py
#                                                                    -> $OUT/grid_batched_cuda.json (or grid_point_cost)
#
# The earlier steps stay available by name: pytest (the CPU tests of the GPU-relevant code), slq
# (bench/slq_overhead.py --device cuda, also LeNet with --hvp-memory-mb 0), steps (bench/gpu_steps.py).
# cudatests (in the default STEPS, 60 s): tests/test_cuda.py and the CUDA tests of tests/test_batched_grid.py, the
# block products, lockstep SLQ and vmapped grids on the device against the CPU.
# scaling (not in the default STEPS; STEPS=scaling, SCALING_S default 420 s): bench/scaling.py, the MPI strong
#              scaling study (paper eqs. 9-11, Table 1, Figures 2-3): CPU ranks 1 2 4 8 16 (one thread each; grid,
#              iteration, data, hybrid SLQ), then GPU ranks 1 2 4 sharing the one GPU (SLQ schemes), each with its own
#              share of the budget. Needs mpi4py and an mpiexec: the mpi4py and mpich wheels in .whl/ give both
#              (mpiexec lands in /tmp/site/bin)   -> $OUT/scaling_cpu.json, scaling_cpu.png, scaling_cuda.json, scaling_cuda.png
# STEPS (default "imports cudatests pyhessian paper grid") picks which run, e.g. STEPS="imports pytest slq grid steps".
# SPECTRUM_EXTRA: extra options of the spectrum step in the paper run (default: "--hvp-memory-mb 4096", plus
# "--group-size 10 --hvp-mode auto" when the step's --help lists both; SPECTRUM_EXTRA=none for none). The
# pyhessian runs give our kept-graph operator 4096 MB too (default 512: too little for ResNet-20's 512-sample batches).
# Each bench writes its JSON as it goes, so a step cut by its timeout still leaves what finished.
# All output goes to $OUT/gpu_check.log; a summary with every step's exit status is printed last and kept in
# $OUT/summary.txt. With the default STEPS, $OUT holds 6 files (the device tool brings back at most 8).
set -u

PY=${PYTHON:-python3}
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
START=$(date +%s)
DEADLINE=$((START + ${DEADLINE_S:-480}))
THREADS=4
STEPS=${STEPS:-imports cudatests pyhessian paper grid}
declare -a SUMMARY=()

remaining() { echo $((DEADLINE - $(date +%s))); }
# cap BUDGET_S: min(BUDGET_S, time left)
cap() { local left; left=$(remaining); if [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi; }

# run NAME BUDGET_S CMD...: run CMD under timeout min(BUDGET_S, time left), its output appended to
# $OUT/gpu_check.log (one log: the device tool brings back at most 8 files)
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
    echo "=== $name (timeout ${budget}s): $*" | tee -a "$OUT/gpu_check.log"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=5 "$budget" "$@" 2>&1 | tee -a "$OUT/gpu_check.log"
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
for name in ("torch", "h5py", "sklearn", "array_api_compat", "scipy", "tqdm", "yaml", "numpy", "pytest", "pyhessian",
             "ffmpeg", "imageio_ffmpeg"):
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

# cudatests: the batched paths on the device against the CPU
run cudatests 60 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_cuda.py tests/test_batched_grid.py -k "cuda or CUDA"

# pyhessian: ours vs PyHessian, same model, weights, data and device (the GPU-throughput issue's figures)
run pyhessian_lenet 140 "$PY" bench/pyhessian_compare.py --device cuda --threads "$THREADS" --models lenet \
    --samples 10000 --batch-size 1000 --k 10 --m 80 --hvp-memory-mb 4096 --json "$OUT/pyhessian_lenet_cuda.json"
run pyhessian_resnet20 160 "$PY" bench/pyhessian_compare.py --device cuda --threads "$THREADS" --models resnet20 \
    --samples 1024 --batch-size 512 --k 10 --m 80 --pyhessian-k 1 --hvp-memory-mb 4096 \
    --json "$OUT/pyhessian_resnet20_cuda.json"

# paper: section 3.3 end to end; its own deadline 10 s inside this step's budget, leaving GRID_S (45) for the grid
GRID_S=${GRID_S:-45}
PAPER_S=$(( $(remaining) - GRID_S ))
[ "$PAPER_S" -gt "${PAPER_MAX_S:-240}" ] && PAPER_S=${PAPER_MAX_S:-240}
if [ -z "${SPECTRUM_EXTRA+x}" ]; then  # unset: a GPU-sized graph budget, and the batched path when the step has it
    SPECTRUM_EXTRA="--hvp-memory-mb 4096"
    case " $STEPS " in
        *" paper "*)
            SPECTRUM_HELP=$("$PY" -m gradvis_steps.spectrum --help 2>/dev/null)
            if grep -q -- --group-size <<<"$SPECTRUM_HELP" && grep -q -- --hvp-mode <<<"$SPECTRUM_HELP"; then
                SPECTRUM_EXTRA="$SPECTRUM_EXTRA --group-size 10 --hvp-mode auto"
            fi ;;
    esac
fi
[ "$SPECTRUM_EXTRA" = none ] && SPECTRUM_EXTRA=""
if [ "$PAPER_S" -gt 30 ]; then
    run paper_3_3 "$PAPER_S" "$PY" bench/paper_3_3.py --device cuda --checkpoints "${PAPER_CHECKPOINTS:-24}" \
        --deadline-s $((PAPER_S - 10)) --reserve-s 30 --workdir /tmp/paper_3_3 --extra-spectrum-args="$SPECTRUM_EXTRA" \
        --json "$OUT/paper_3_3_cuda.json"
else
    SUMMARY+=("paper_3_3: SKIPPED (${PAPER_S}s left before the grid's share)")
fi

# grid: the batched grid bench when this checkout has it (bench/grid_batched.py, added alongside), else
# bench/grid_point_cost.py; --threads is passed only where the bench's --help lists it
GRID_BENCH=bench/grid_batched.py
[ -f "$GRID_BENCH" ] || GRID_BENCH=bench/grid_point_cost.py
GRID_ARGS=(--device cuda --json "$OUT/$(basename "$GRID_BENCH" .py)_cuda.json")
GRID_HELP=$("$PY" "$GRID_BENCH" --help 2>/dev/null)
grep -q -- --threads <<<"$GRID_HELP" && GRID_ARGS+=(--threads "$THREADS")
[ "$GRID_BENCH" = bench/grid_point_cost.py ] && GRID_ARGS+=(--resnet-samples 512 --rounds 8)
run grid_cuda "$(cap "$GRID_S")" "$PY" "$GRID_BENCH" "${GRID_ARGS[@]}"

# scaling: the MPI strong-scaling study, CPU ranks up to 16 then ranks sharing the GPU (bench/README.md)
case " $STEPS " in
    *" scaling "*)
        [ -x /tmp/site/bin/mpiexec ] && export PATH=/tmp/site/bin:$PATH
        SCALING_S=$(cap "${SCALING_S:-420}")
        run scaling_cpu $(( SCALING_S * 2 / 3 )) "$PY" bench/scaling.py --ranks 1 2 4 8 16 --repeats 3 --k 16 --m 20 \
            --resolution 40 --table-n 2 10 50 100 --json "$OUT/scaling_cpu.json" --plot "$OUT/scaling_cpu.png"
        run scaling_cuda "$(cap $(( SCALING_S / 3 )))" "$PY" bench/scaling.py --device cuda --ranks 1 2 4 --repeats 3 \
            --schemes iteration data hybrid --k 16 --m 20 --table-n --json "$OUT/scaling_cuda.json" \
            --plot "$OUT/scaling_cuda.png" ;;
esac

# earlier steps, selectable by name (not in the default STEPS)
run pytest 100 "$PY" -m pytest tests/test_cuda.py tests/test_lanczos_graphs.py tests/test_lanczos.py \
    tests/test_slq.py tests/test_torch_backend.py -q -p no:cacheprovider -rs
run slq_overhead_cuda 220 "$PY" bench/slq_overhead.py --device cuda --threads "$THREADS" --repeats 3 \
    --resnet-k 2 --resnet-m 20 --resnet-samples 256 --mode-repeats 4 --json "$OUT/slq_overhead_cuda.json"
run slq_recomputed_cuda 80 "$PY" bench/slq_overhead.py --device cuda --threads "$THREADS" --repeats 2 \
    --models lenet --no-predict --hvp-memory-mb 0 --mode-repeats 4 --json "$OUT/slq_overhead_cuda_recomputed.json"
run steps_gpu 90 "$PY" bench/gpu_steps.py --out /tmp/gpu_steps

echo
echo "=== summary ($(( $(date +%s) - START ))s in all; JSON and logs in $OUT)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
