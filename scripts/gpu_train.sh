#!/usr/bin/env bash
# The training half of a GPU session, as a second call after scripts/gpu_all.sh: FocalNet-T trained
# for STEPS steps at 224 and at a higher resolution with each backend (reference, and the fused
# ones that load), reporting img/s and peak memory per run.
#
#   FOCALFAST_COMMIT=<commit> OUT=/tmp/out bash scripts/gpu_train.sh
#
# Env: STEPS (default 200), BACKENDS (default "reference triton cuda"), RUNS (default
# "224:128 512:32": resolution:batch), GPU_TRAIN_BUDGET seconds (default 540). A run that fails
# (e.g. out of memory) is listed as failed; the others go on. Writes $OUT/train_results.md and
# $OUT/train.log.
set -u -o pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$PWD/gpu-out}
PY=${PYTHON:-python3}
STEPS=${STEPS:-200}
BACKENDS=${BACKENDS:-reference triton cuda}
RUNS=${RUNS:-224:128 512:32}
BUDGET=${GPU_TRAIN_BUDGET:-540}
COMMIT=${FOCALFAST_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
mkdir -p "$OUT"
LOG=$OUT/train.log
RUN_DIR=$(mktemp -d)
START=$SECONDS
export PYTHONUNBUFFERED=1

{
    echo "# FocalNet-T training at larger resolution"
    echo
    echo "commit $COMMIT, $(date -u +%Y-%m-%dT%H:%MZ), $($PY -c 'import torch, triton; \
print(torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "| torch", torch.__version__, "| CUDA", torch.version.cuda, "| triton", triton.__version__)')"
    echo
    echo "generated shapes, AdamW, bf16 autocast, channels-last; $STEPS steps, img/s over the steps after 10 warm-up steps"
    echo
    echo "| resolution | batch | backend | img/s | peak memory (MiB) | final loss | status |"
    echo "|---|---|---|---|---|---|---|"
} >"$OUT/train_results.md"

for run in $RUNS; do
    res=${run%%:*}
    batch=${run##*:}
    for backend in $BACKENDS; do
        left=$((BUDGET - (SECONDS - START)))
        if ((left < 30)); then
            echo "| $res | $batch | $backend | | | | skipped: time budget used up |" >>"$OUT/train_results.md"
            continue
        fi
        dir=$RUN_DIR/$res-$backend
        echo "== $res px, batch $batch, $backend (limit ${left}s)" | tee -a "$LOG"
        timeout --kill-after=10 "$left" $PY -m focalfast train --model focalnet_tiny_srf --image-size "$res" \
            --batch-size "$batch" --max-steps "$STEPS" --timing-warmup 10 --train-samples $((batch * (STEPS + 1))) \
            --val-samples 64 --backend "$backend" --out "$dir" --overwrite --no-progress --log-every 50 \
            >>"$LOG" 2>&1
        rc=$?
        if [ $rc -eq 0 ] && [ -f "$dir/summary.json" ]; then
            $PY - "$dir/summary.json" "$res" "$batch" "$backend" >>"$OUT/train_results.md" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
peak = "-" if s["peak_memory_mb"] is None else f"{s['peak_memory_mb']:.0f}"
print(f"| {sys.argv[2]} | {sys.argv[3]} | {s['backend']} | {s['train_images_per_s']:.1f} | {peak} | {s['train_loss']:.4f} | ok |")
PYEOF
        else
            reason=$(grep -E "OutOfMemoryError|Error|error" "$LOG" | tail -n 1 | cut -c1-120)
            echo "| $res | $batch | $backend | | | | failed (exit $rc): ${reason//|/ } |" >>"$OUT/train_results.md"
        fi
    done
done
rm -rf "$RUN_DIR"
cat "$OUT/train_results.md"
