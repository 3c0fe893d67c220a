#!/usr/bin/env bash
# The GPU training run of the vehicle model in one command, for a short loan of an H100/H200-class GPU with
# no network and no ROS (its python3 has torch, numpy, opencv, safetensors, yaml, tqdm).
#
#   benchmarks/gpu_train.sh --prepare          # HERE, beforehand: pack the training data to travel
#                                              #   (out/gpu_pack, ~24 MiB; carry it: run(carry=["out/gpu_pack"]))
#   benchmarks/gpu_train.sh [--minutes 7]      # THERE: train config/train_vehicles.yaml (512 input, bf16) on
#                                              #   the packed data; weights + log to $OUT (default out/gpu_train)
#   benchmarks/gpu_train.sh --smoke            # CPU check of both steps on a few images (CI)
#
# Training stops by itself when its schedule ends, or after --minutes with SIGTERM (the trainer checkpoints
# and leaves; last.safetensors holds the EMA weights). Validation needs the full valid splits and
# pycocotools, so it runs back here:
#   .venv/bin/centernet-eval --weights out/gpu_train/run/last.safetensors --data ../shared/data/vehicles-openimages
#   .venv/bin/centernet-eval --weights out/gpu_train/run/last.safetensors --data ../shared/data/traffic-cctv \
#       --class-map config/class_maps/traffic-cctv.yaml
# Writes: run/ (last.safetensors, best.safetensors, last_state.pt, log.csv, config.yaml), model_fp16.safetensors,
# train.log, summary.txt (iterations, images/s, wall time, the GPU).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=train
minutes=7
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) mode=prepare ;;
    --smoke) mode=smoke ;;
    --minutes) minutes="$2"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu_train.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

pack() {  # $1 = out folder, then extra options
  local out="$1"; shift
  "$PY" -m centernet_ros.pack_data --config config/train_vehicles.yaml --out "$out" --thin traffic-cctv \
    --every 4 --max-side 512 --quality 60 --budget-mib 30 "$@"
}

train() {  # $1 = packed config, $2 = output folder, $3 = minutes, then extra options
  local cfg="$1" out="$2" mins="$3"; shift 3
  mkdir -p "$out"
  local t0 rc=0
  t0=$(date +%s)
  timeout -s TERM -k 60 "$((mins * 60))" "$PY" -m centernet_ros.train --config "$cfg" --output-dir "$out/run" \
    --no-progress --set train.val_interval=0 "$@" 2>&1 | tee "$out/train.log" || rc=${PIPESTATUS[0]}
  local t1
  t1=$(date +%s)
  # 0: the schedule ended; 124 / 143: the time limit's SIGTERM (the trainer checkpointed first)
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && [ "$rc" -ne 143 ]; then
    echo "gpu_train.sh: training failed (exit $rc), see $out/train.log" >&2
    return "$rc"
  fi
  "$PY" - "$out" "$((t1 - t0))" <<'PY'
import sys
from pathlib import Path

import torch

from centernet_ros.weights import load_model, read_meta, save_model

out, wall = Path(sys.argv[1]), int(sys.argv[2])
model, meta = load_model(out / "run" / "last.safetensors")
save_model(out / "model_fp16.safetensors", model, class_names=meta.class_names, input_size=meta.input_size,
           half=True, extra=meta.extra)
step = meta.extra.get("step")
cfg = meta.extra.get("config", {}).get("train", {})
imgs = (step or 0) * int(cfg.get("batch_size", 0))
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
text = (f"device: {gpu}\niterations: {step}\nimages: {imgs}\nwall: {wall} s\n"
        f"images/s (whole run incl. start-up): {imgs / max(wall, 1):.1f}\n")
(out / "summary.txt").write_text(text)
print(text, end="")
PY
}

case "$mode" in
  prepare)
    pack out/gpu_pack/data
    du -sh out/gpu_pack
    ;;
  train)
    [ -f out/gpu_pack/data/config.yaml ] || { echo "gpu_train.sh: no out/gpu_pack (run --prepare here and carry it)" >&2; exit 2; }
    OUT_DIR="${OUT:-out/gpu_train}"
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
    train out/gpu_pack/data/config.yaml "$OUT_DIR" "$minutes" --device cuda
    ;;
  smoke)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    pack "$tmp/pack" --limit-images 6
    train "$tmp/pack/config.yaml" "$tmp/train" 5 --device cpu --input-size 128 --batch-size 2 --max-iters 2 \
      --workers 0 --set train.eval_size=[128,224] --set model.head_width=16 --set model.pool_width=8 \
      --set data.cache_images=false
    test -s "$tmp/train/model_fp16.safetensors"
    grep -q "iterations: 2" "$tmp/train/summary.txt"
    echo "gpu_train.sh --smoke: ok"
    ;;
esac
