#!/usr/bin/env bash
# One-shot GPU check (issue 15): every CUDA test, then the GPU benchmarks, all tables into one folder,
# within 8 minutes on an H100/H200. Needs only python3 with torch, numpy, opencv, onnxruntime, safetensors,
# yaml, tqdm and pytest: no ROS, no pycocotools, no network, no install (runs from the checkout).
#
#   benchmarks/gpu_check.sh                 # on the GPU machine; tables -> $OUT (default ./out/gpu_check)
#   benchmarks/gpu_check.sh --smoke         # a tiny version of every step on the CPU (CI: test_benchmarks.py)
#   benchmarks/gpu_check.sh --out DIR --budget 420
#
# Steps, in order of importance (each a command of its own; its Markdown to DIR/<step>.md, stderr to
# DIR/<step>.log, rows to DIR/<step>.json):
#   cuda_tests        benchmarks/cuda_tests.py --require-cuda: pytest -k cuda over test/ (decode, pools, box ops,
#                     preprocessing, targets, losses, detector, fp16 / channels_last / compile-CUDA-graphs paths)
#   model_eager       bench_model.py: ours vs baseline, fp32 fp16 bf16, batch 1 8 32, input 512 384
#   model_cl          the same with --channels-last
#   decode            bench_decode.py, batch 1 8 32 (plan copy), and decode_device (the tensor path)
#   pipeline          bench_pipeline.py: Detector.detect without ROS, 1 and 8 cameras, p50 / p99 (eager fp32)
#   pipeline_fast     the same with fp16 + channels_last + torch.compile (CUDA graphs)
#   model_compile_*   bench_model.py --channels-last --compile (reduce-overhead = CUDA graphs), "ours" only,
#                     fp16, then bf16, then fp32, each while the time budget lasts
# Each step runs under `timeout` with its own cap and never past the overall budget (--budget, default 450 s);
# DIR/summary.md lists every step: ok / FAILED (exit status) / TIMEOUT / not run (budget), seconds, command.
# Exit status 0 only when every step ran and passed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SMOKE=0
OUT_DIR="${OUT:-./out/gpu_check}"
BUDGET="${GPU_CHECK_BUDGET_S:-450}"
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --out) OUT_DIR="${2:?--out needs a folder}"; shift ;;
        --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check.sh: --budget must be whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then PY=.venv/bin/python
else PY=python3
fi
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
SUMMARY="$OUT_DIR/summary.md"
START=$(date +%s)
FAILED=0

if [ "$SMOKE" = 1 ]; then
    DEV=cpu
else
    DEV=cuda
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check.sh: $PY sees no CUDA device (use --smoke for the CPU version)" >&2
        exit 2
    fi
fi

{
    echo "# GPU check ($([ "$SMOKE" = 1 ] && echo 'smoke, CPU' || echo 'CUDA'))"
    echo
    echo "- date (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ); commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "- python: \`$PY\` $("$PY" -c 'import platform, torch; print(platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1)"
    if [ "$DEV" = cuda ]; then
        echo "- GPU: $("$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(p.name, f"{p.total_memory / 2**30:.0f} GiB")' 2>&1)"
        command -v nvidia-smi >/dev/null && nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1
    fi
    echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ //') ($(nproc 2>/dev/null) cores)"
    echo "- weights: models/centernet_vehicles.safetensors sha256 $(sha256sum models/centernet_vehicles.safetensors 2>/dev/null | cut -c1-12)"
    echo "- budget: ${BUDGET} s"
    echo
    echo "| step | status | seconds | command |"
    echo "| --- | --- | --- | --- |"
} > "$SUMMARY"

# step NAME CAP_SECONDS [ENV=VALUE ...] -- COMMAND...: run COMMAND with at most CAP seconds (less if the budget is
# nearly spent), stdout -> NAME.md, stderr -> NAME.log, one summary row.
step() {
    local name="$1" cap="$2"; shift 2
    local envs=()
    while [ "$1" != "--" ]; do envs+=("$1"); shift; done
    shift
    local left=$(( BUDGET - ($(date +%s) - START) ))
    local limit=$(( cap < left ? cap : left ))
    local shown="$*"
    [ ${#envs[@]} -gt 0 ] && shown="${envs[*]} $shown"
    if [ "$limit" -lt 15 ]; then
        echo "| $name | not run (budget spent) | 0 | \`$shown\` |" >> "$SUMMARY"
        echo "== $name: not run (budget spent)" >&2
        FAILED=1
        return
    fi
    echo "== $name (at most ${limit} s): $shown" >&2
    local t0=$(date +%s) rc
    env "${envs[@]}" timeout -k 10 "$limit" "$@" > "$OUT_DIR/$name.md" 2> "$OUT_DIR/$name.log"
    rc=$?
    local dt=$(( $(date +%s) - t0 )) status=ok
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="TIMEOUT after ${limit} s"; FAILED=1
    elif [ $rc -ne 0 ]; then status="FAILED (exit $rc, see $name.log)"; FAILED=1
    fi
    echo "| $name | $status | $dt | \`$shown\` |" >> "$SUMMARY"
    echo "   $status in ${dt} s" >&2
}

B=benchmarks
if [ "$SMOKE" = 1 ]; then
    MODEL=(--device cpu --sizes 64 --batch-sizes 1 2 --precisions fp32 --warmup 0 --repeats 1 --max-repeats 1 --no-flops)
    DECODE=(--device cpu --size 128 --batch-sizes 1 2 --num-classes 3 --objects 4 --topk 12 --warmup 0 --repeats 1)
    PIPE=(--device cpu --cameras 1 2 --resolutions 96x64 --input-size 64 64 --iters 2 --warmup 0)
    step cuda_tests 300 -- "$PY" $B/cuda_tests.py --junitxml "$OUT_DIR/cuda_tests.xml"
    step model_eager 120 -- "$PY" $B/bench_model.py "${MODEL[@]}" --json "$OUT_DIR/model_eager.json"
    step model_cl 120 -- "$PY" $B/bench_model.py "${MODEL[@]}" --channels-last --json "$OUT_DIR/model_cl.json"
    step decode 120 -- "$PY" $B/bench_decode.py "${DECODE[@]}" --json "$OUT_DIR/decode.json"
    step decode_device 120 -- "$PY" $B/bench_decode.py "${DECODE[@]}" --decode-plan device --json "$OUT_DIR/decode_device.json"
    step pipeline 120 -- "$PY" $B/bench_pipeline.py "${PIPE[@]}" --backend torch --json "$OUT_DIR/pipeline.json"
    step pipeline_fast 120 -- "$PY" $B/bench_pipeline.py "${PIPE[@]}" --backend torch --channels-last --compile \
        --json "$OUT_DIR/pipeline_fast.json"
    # torch.compile of the whole network takes minutes on a small CPU: the smoke run checks the command line
    # with compilation switched off (TORCHDYNAMO_DISABLE=1 makes torch.compile return the eager model)
    step model_compile_fp32 120 TORCHDYNAMO_DISABLE=1 -- "$PY" $B/bench_model.py "${MODEL[@]}" --models ours \
        --channels-last --compile --compile-mode reduce-overhead --json "$OUT_DIR/model_compile_fp32.json"
else
    MODEL=(--device cuda --sizes 512 384 --batch-sizes 1 8 32 --precisions fp32 fp16 bf16 --warmup 5 --repeats 20
           --max-repeats 40)
    DECODE=(--device cuda --batch-sizes 1 8 32)
    PIPE=(--device cuda --cameras 1 8 --resolutions 1280x720 --iters 200 --warmup 20)
    step cuda_tests 150 -- "$PY" $B/cuda_tests.py --require-cuda --junitxml "$OUT_DIR/cuda_tests.xml"
    step model_eager 70 -- "$PY" $B/bench_model.py "${MODEL[@]}" --json "$OUT_DIR/model_eager.json"
    step model_cl 70 -- "$PY" $B/bench_model.py "${MODEL[@]}" --channels-last --json "$OUT_DIR/model_cl.json"
    step decode 30 -- "$PY" $B/bench_decode.py "${DECODE[@]}" --json "$OUT_DIR/decode.json"
    step decode_device 30 -- "$PY" $B/bench_decode.py "${DECODE[@]}" --decode-plan device --json "$OUT_DIR/decode_device.json"
    step pipeline 40 -- "$PY" $B/bench_pipeline.py "${PIPE[@]}" --json "$OUT_DIR/pipeline.json"
    step pipeline_fast 90 -- "$PY" $B/bench_pipeline.py "${PIPE[@]}" --fp16 --channels-last --compile \
        --json "$OUT_DIR/pipeline_fast.json"
    for prec in fp16 bf16 fp32; do
        step "model_compile_$prec" 150 -- "$PY" $B/bench_model.py "${MODEL[@]}" --precisions "$prec" --models ours \
            --channels-last --compile --compile-mode reduce-overhead --json "$OUT_DIR/model_compile_$prec.json"
    done
fi

{
    echo
    echo "total: $(( $(date +%s) - START )) s; $([ $FAILED = 0 ] && echo 'all steps passed' || echo 'NOT all steps passed')"
} >> "$SUMMARY"
cat "$SUMMARY"
exit $FAILED
