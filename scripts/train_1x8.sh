#!/usr/bin/env bash
# One node, 8 GPUs. Global batch 1024 = 8 x 128 (the paper's), lr = 5e-5 x 1024 / 256 = 2e-4,
# 5 warm-up epochs, then constant; EMAs 0.9999 / 0.9996; bf16; 200 epochs = 250k steps.
#   IMAGENET=/data/imagenet PRESET=vco-b16 bash scripts/train_1x8.sh [--set key=value ...]
# PRESET: vco-b16 | vco-l16 | vco-h16 (V-Co), jit-b16 | jit-l16 | jit-h16 (baselines).
# L/16 and H/16 shard with FSDP2 (train.parallel=fsdp); B/16 uses DDP.
set -euo pipefail
PRESET=${PRESET:-vco-b16}
OUT=${OUT:-runs/${PRESET}}
case "$PRESET" in *l16|*h16) PARALLEL=fsdp ;; *) PARALLEL=ddp ;; esac
RESUME=(--out "$OUT" --preset "$PRESET" --data "${IMAGENET:?set IMAGENET to the ImageNet root}/train")
[ -f "$OUT/checkpoint.safetensors" ] && RESUME=(--resume "$OUT")   # re-running continues the run
exec torchrun --standalone --nproc_per_node=8 -m vco.cli train "${RESUME[@]}" \
  --set train.batch_size=128 train.parallel=$PARALLEL train.compile=true "$@"
