#!/usr/bin/env bash
# Everything a GPU session checks, in one call on the device machine (repo copied to the cwd):
# build the CUDA extension, GPU tests, compute-sanitizer, benchmarks, a results table.
#
#   FOCALFAST_COMMIT=<git rev-parse --short=12 HEAD, run here> bash scripts/gpu_all.sh
#
# The device copy of the repo has no .git, so pass the commit in. Every stage runs under
# `timeout` within GPU_ALL_BUDGET seconds (default 500, under the device's 600 s per call); a
# failing or timed-out stage does not stop the next, and a stage summary ends the output.
# Stages (GPU_ALL_STAGES selects; default all but tune): environment; build (in the background,
# at most GPU_ALL_BUILD_SECONDS, default 200, while "tests" runs); tests (pytest -k "not cuda"), then
# tests-cuda (-k cuda: a faulting CUDA kernel ends its process's CUDA context, so those run last),
# each at most GPU_ALL_TESTS_SECONDS (default 180), stopping after GPU_ALL_MAXFAIL failures (default
# 10); memcheck and racecheck (compute-sanitizer); kernel-times (per-kernel GPU time of the op at
# GPU_ALL_KERNEL_TIMES_SHAPES, default T.s3,T.s1,T.s1.lrf, at most GPU_ALL_KERNEL_TIMES_SECONDS,
# default 120; on an H200 each shape takes about 20 s); bench (GPU_ALL_BENCH_ARGS replaces its
# default "--suite full", e.g. "--suite default --kinds op,module --dtypes bf16"); tune, only when named (the Triton schedule search, after the
# bench, in GPU_ALL_TUNE_SECONDS, default 90, at GPU_ALL_TUNE_SHAPES); tune-sweep, only when named (the CUDA sweep's
# schedules, focalfast.ops.cuda.tune_sweep, in GPU_ALL_TUNE_SWEEP_SECONDS, default 90, at GPU_ALL_TUNE_SWEEP_SHAPES);
# pytest-benchmark.
# GPU_ALL_TESTS (space-separated pytest arguments, e.g. "-n 8 tests/test_triton_backend.py")
# replaces the test selection; the two test stages add their -k.
# Files in $OUT (flat, at most 8):
#   results.md             device, versions, commit, date, stages, the bench table, test and sanitizer summaries
#   gpu_all.log            environment, build, kernel-times, bench and pytest-benchmark output
#   tests.log              python -m pytest on the kernel and training test files (their tests run on
#                          CUDA tensors there) and the timm drop-in tests (timm imports only there)
#   sanitizer.log          compute-sanitizer memcheck and racecheck of python -m focalfast.ops.cuda.sanitize
#   kernel_times.md        python -m focalfast.bench.kernel_times: each kernel's share of the op
#   ncu.txt                ncu's details pages of the CUDA chain and epilogue kernels
#   bench.json, bench.png  focalfast bench --suite full (cut by its time budget)
#   pytest_benchmark.json  pytest benchmarks (quick scope, no torch.compile), if time is left
#   tune.json              the tune stage's rows (its table goes into results.md)
#   tune_sweep.json        the tune-sweep stage's rows (its table too)
# Copy results.md to benchmarks/results/<date>-<device>.md to commit it (benchmarks/results/README.md).
set -u -o pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$PWD/gpu-out}
PY=${PYTHON:-python3}
BUDGET=${GPU_ALL_BUDGET:-500}
# A later call can redo some stages only, e.g. GPU_ALL_STAGES="build tests".
STAGES=${GPU_ALL_STAGES:-environment build tests tests-cuda memcheck racecheck kernel-times ncu bench pytest-benchmark}
mkdir -p "$OUT"
LOG=$OUT/gpu_all.log
START=$SECONDS
SUMMARY=()
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
export FOCALFAST_COMMIT=${FOCALFAST_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
# Build the extension for this GPU's arch only (focalfast/ops/cuda/extension.py reads FOCALFAST_CUDA_ARCHS).
if [ -z "${FOCALFAST_CUDA_ARCHS:-}" ]; then
    FOCALFAST_CUDA_ARCHS=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null) \
        && export FOCALFAST_CUDA_ARCHS
fi

left() { echo $((BUDGET - (SECONDS - START))); }

# stage NAME CAP RESERVE LOGFILE CMD...: run CMD for at most CAP seconds, keeping RESERVE seconds
# of the budget for the stages after it; output appended to LOGFILE.
stage() {
    local name=$1 cap=$2 reserve=$3 logfile=$4
    shift 4
    if [[ " $STAGES " != *" $name "* ]]; then
        SUMMARY+=("$name: not selected (GPU_ALL_STAGES)")
        return 0
    fi
    local limit=$(($(left) - reserve))
    ((limit > cap)) && limit=$cap
    if ((limit < 15)); then
        SUMMARY+=("$name: skipped, time budget used up")
        echo "== $name: skipped, time budget used up" | tee -a "$LOG"
        return 0
    fi
    echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
    [ "$logfile" != "$LOG" ] && echo "== $name (limit ${limit}s): $*" >>"$logfile"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >>"$logfile" 2>&1
    record "$name" $? "$t0" "$limit"
}

# record NAME RC T0 LIMIT: a stage's line in the summary and the log, from its exit status under `timeout`.
record() {
    local status
    case $2 in
        0) status="ok" ;;
        124 | 137) status="TIMEOUT after ${4}s" ;;
        *) status="FAILED (exit $2)" ;;
    esac
    SUMMARY+=("$1: $status, $((SECONDS - $3))s")
    echo "== $1: $status, $((SECONDS - $3))s" | tee -a "$LOG"
}

has_module() { $PY -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }

# 1. environment
stage environment 60 100 "$LOG" bash -c "nvidia-smi; nvcc --version; $PY -c 'import torch, triton, sys; \
print(sys.version); print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, \"triton\", triton.__version__); \
print(torch.cuda.get_device_name(), torch.cuda.get_device_properties(0))'; \
$PY -m pip list 2>/dev/null | grep -iE '^(torch|triton|timm|transformers|pytest|pytest-benchmark|ninja|pybind11) '"

# 2. the CUDA extension: the loader imports a module carried in focalfast/ops/cuda/ when it was built from these
# sources for this arch (scripts/build_cuda_module.py builds one on a machine without a GPU), else JIT-builds it
# (over 200 s on the lent H200 on 2026-12-04: carry the module). In the background while "tests" runs.
if [[ " $STAGES " == *" build "* ]]; then
    BUILD_LOG=$(mktemp) BUILD_SECONDS=${GPU_ALL_BUILD_SECONDS:-200} BUILD_T0=$SECONDS
    echo "== build (background, limit ${BUILD_SECONDS}s)" | tee -a "$LOG"
    timeout --kill-after=10 "$BUILD_SECONDS" $PY -c 'from focalfast.ops.cuda import extension; \
r = extension.unavailable_reason(); print("CUDA extension:", r or extension.load().__file__); \
raise SystemExit(1 if r else 0)' >"$BUILD_LOG" 2>&1 &
    BUILD_PID=$!
else
    SUMMARY+=("build: not selected (GPU_ALL_STAGES)")
fi

# 3. GPU tests, in two runs: the CUDA backend's last, since a kernel that faults ends the CUDA context of
# its process and every test after it there fails too
if [ -n "${GPU_ALL_TESTS:-}" ]; then read -r -a TEST_ARGS <<<"$GPU_ALL_TESTS"; else TEST_ARGS=(tests/test_backend_contract.py tests/test_triton_backend.py tests/test_cuda_backend.py
    tests/test_dwconv_layernorm_triton.py tests/test_cuda_epilogue.py tests/test_gelu.py tests/test_train.py tests/test_module.py
    tests/test_timm_dropin.py); fi
PYTEST_TAIL=(-q "--maxfail=${GPU_ALL_MAXFAIL:-10}" -rfEs --durations=15 -p no:cacheprovider)
stage tests "${GPU_ALL_TESTS_SECONDS:-180}" 200 "$OUT/tests.log" \
    $PY -m pytest "${TEST_ARGS[@]}" -k "not cuda" "${PYTEST_TAIL[@]}"

if [ -n "${BUILD_PID:-}" ]; then
    wait "$BUILD_PID"
    rc=$?
    cat "$BUILD_LOG" >>"$LOG" && rm -f "$BUILD_LOG"
    record build $rc "$BUILD_T0" "$BUILD_SECONDS"
fi
stage tests-cuda "${GPU_ALL_TESTS_SECONDS:-180}" 150 "$OUT/tests.log" \
    $PY -m pytest "${TEST_ARGS[@]}" -k "cuda" "${PYTEST_TAIL[@]}"

# 4. compute-sanitizer on the CUDA kernels (no caching allocator, so out-of-bounds is seen)
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
if has_module focalfast.ops.cuda.sanitize && [ -n "$SANITIZER" ]; then
    stage memcheck 90 120 "$OUT/sanitizer.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        "$SANITIZER" --tool memcheck --error-exitcode 3 $PY -m focalfast.ops.cuda.sanitize
    stage racecheck 90 100 "$OUT/sanitizer.log" \
        "$SANITIZER" --tool racecheck --error-exitcode 3 $PY -m focalfast.ops.cuda.sanitize
else
    SUMMARY+=("sanitizer: skipped (no focalfast.ops.cuda.sanitize module or no compute-sanitizer)")
fi

# 4b. where each op's GPU time goes: per-kernel times of the op at FocalNet-T stage shapes
stage kernel-times "${GPU_ALL_KERNEL_TIMES_SECONDS:-120}" 80 "$LOG" $PY -m focalfast.bench.kernel_times \
    --shapes "${GPU_ALL_KERNEL_TIMES_SHAPES:-T.s3,T.s1,T.s1.lrf}" --dtype bf16 \
    --variants "${GPU_ALL_KERNEL_TIMES_VARIANTS:-cuda,triton,eager}" --out "$OUT/kernel_times.md"

# 4c. why those kernels take that time: ncu's sections of the CUDA Context*/Output* kernels, one process per
# shape (ncu prints its pages when the program ends, so a shape cut by its time limit loses only its own)
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
if [[ " $STAGES " == *" ncu "* && -z "$NCU" ]]; then
    SUMMARY+=("ncu: skipped (no ncu found)")
else
    for shape in ${GPU_ALL_NCU_SHAPES:-T.s1 T.s3 T.s1.lrf}; do
        stage ncu "${GPU_ALL_NCU_SECONDS:-60}" 100 "$OUT/ncu.txt" "$NCU" --clock-control none \
            --kernel-name-base demangled --kernel-name "regex:focalfast.*(Context|Output)" \
            --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
            --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
            $PY -m focalfast.bench.kernel_times --shapes "$shape" --dtype bf16 --variants cuda --warmup 0 --steps 1 \
            --no-profiler
    done
fi

# 5. benchmarks: the bench table first; its own budget stops new rows in time to write its files
BENCH_DIR=$(mktemp -d)
TUNE_RESERVE=20
[[ " $STAGES " == *" tune "* ]] && TUNE_RESERVE=${GPU_ALL_TUNE_SECONDS:-90}
[[ " $STAGES " == *" tune-sweep "* ]] && TUNE_RESERVE=$((TUNE_RESERVE + ${GPU_ALL_TUNE_SWEEP_SECONDS:-90}))
bench_limit=$(($(left) - TUNE_RESERVE))
((bench_limit > 400)) && bench_limit=400
read -r -a BENCH_ARGS <<<"${GPU_ALL_BENCH_ARGS:---suite full}"
stage bench 400 "$TUNE_RESERVE" "$LOG" $PY -m focalfast.bench "${BENCH_ARGS[@]}" --out-dir "$BENCH_DIR" --no-progress \
    --time-budget $((bench_limit > 80 ? bench_limit - 40 : bench_limit / 2))
cp "$BENCH_DIR/bench.json" "$BENCH_DIR/bench.png" "$OUT/" 2>/dev/null

# 5b. only when GPU_ALL_STAGES names it, in the GPU_ALL_TUNE_SECONDS (default 90) the bench leaves: the
# search over Triton chain-kernel schedules (tiles, warps, bands) at GPU_ALL_TUNE_SHAPES (default FocalNet-T
# stages 1 and 3), bf16; each candidate is checked against the default schedule
TUNE_TXT=$(mktemp)
if [[ " $STAGES " == *" tune "* ]]; then
    stage tune 420 10 "$TUNE_TXT" $PY -m focalfast.ops.triton.tune_chain --shapes "${GPU_ALL_TUNE_SHAPES:-T.s1,T.s3}" --dtype bf16 \
        --budget $(($(left) > 400 ? 360 : $(left) - 30)) --out "$OUT/tune.json" --no-progress
fi
# the same for the CUDA sweep's schedules (chunk, bands, context_bwd's pixels per item), when named: tune-sweep
if [[ " $STAGES " == *" tune-sweep "* ]]; then
    stage tune-sweep 300 10 "$TUNE_TXT" $PY -m focalfast.ops.cuda.tune_sweep \
        --shapes "${GPU_ALL_TUNE_SWEEP_SHAPES:-T.s1,T.s1.lrf,T.s3}" --dtype bf16 \
        --budget $(($(left) > 300 ? 260 : $(left) - 30)) --out "$OUT/tune_sweep.json" --no-progress
fi

if (($(left) >= 120)); then
    stage pytest-benchmark 400 10 "$LOG" env FOCALFAST_BENCH_SCOPE=quick $PY -m pytest benchmarks -q \
        --benchmark-only --benchmark-json "$OUT/pytest_benchmark.json" -p no:cacheprovider \
        -k "not compiled and not max_resolution"
else
    SUMMARY+=("pytest-benchmark: skipped, less than 120 s left")
fi

# 6. results.md
{
    echo "# focalfast GPU run"
    echo
    echo "Stages (budget ${BUDGET}s, used $((SECONDS - START))s):"
    echo
    for line in "${SUMMARY[@]}"; do echo "- $line"; done
    echo
    if [ -f "$BENCH_DIR/bench.md" ]; then
        sed 's/^# /## /' "$BENCH_DIR/bench.md"
    else
        echo "## Environment (the bench did not write its table)"
        echo
        echo '```'
        $PY -c "import json; from focalfast import bench; \
print(json.dumps(bench.environment(bench.default_device()), indent=1))" 2>&1
        echo '```'
    fi
    if [ -f "$OUT/tests.log" ]; then
        echo
        echo "## Tests"
        echo
        echo '```'
        grep -E "^(FAILED|ERROR) " "$OUT/tests.log" | head -n 40
        grep -E "^== tests|(passed|failed|errors?|no tests ran).* in [0-9.]+s" "$OUT/tests.log"
        echo '```'
    fi
    if [ -f "$OUT/sanitizer.log" ]; then
        echo
        echo "## compute-sanitizer"
        echo
        echo '```'
        grep -E "^== |ERROR SUMMARY|RACECHECK SUMMARY" "$OUT/sanitizer.log" | head -n 20
        echo "... last lines:"
        tail -n 10 "$OUT/sanitizer.log"
        echo '```'
    fi
    if [ -f "$OUT/kernel_times.md" ]; then
        echo
        sed 's/^# /## /' "$OUT/kernel_times.md"
    fi
    if [ -s "$TUNE_TXT" ]; then
        echo
        echo "## Schedules (tune: Triton chain kernels; tune-sweep: CUDA sweep)"
        echo
        echo '```'
        grep -v "^== " "$TUNE_TXT"
        echo '```'
    fi
} >"$OUT/results.md"
rm -rf "$BENCH_DIR" "$TUNE_TXT"

echo
echo "================ summary ================"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
echo "total $((SECONDS - START))s of ${BUDGET}s; files in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
echo
cat "$OUT/results.md"
