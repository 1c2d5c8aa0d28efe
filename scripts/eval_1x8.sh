#!/usr/bin/env bash
# FID-50K (50 per class) of a run on 8 GPUs: samples split over the ranks, identical to 1 GPU.
#   RUN=runs/vco-b16 REF=VIRTUAL_imagenet256_labeled.npz bash scripts/eval_1x8.sh [--cfg 1.8]
set -euo pipefail
exec torchrun --standalone --nproc_per_node=8 -m vco.cli eval --run "${RUN:?}" --ref "${REF:?}" \
  --num 50000 --batch-size 128 "$@"
