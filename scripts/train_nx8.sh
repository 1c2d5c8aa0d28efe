#!/usr/bin/env bash
# N nodes x 8 GPUs with torchrun's c10d rendezvous; run this same command on every node.
# The global batch stays 1024: 1024 / (8 N) per GPU (N = 2: 64, N = 4: 32, N = 8: 16).
#   NNODES=2 MASTER=node0.cluster IMAGENET=/data/imagenet PRESET=vco-b16 bash scripts/train_nx8.sh
set -euo pipefail
PRESET=${PRESET:-vco-b16}
NNODES=${NNODES:?set NNODES}
OUT=${OUT:-runs/${PRESET}}
PER_GPU=$((1024 / (8 * NNODES)))
case "$PRESET" in *l16|*h16) PARALLEL=fsdp ;; *) PARALLEL=ddp ;; esac
RESUME=(--out "$OUT" --preset "$PRESET" --data "${IMAGENET:?set IMAGENET}/train")
[ -f "$OUT/checkpoint.safetensors" ] && RESUME=(--resume "$OUT")
exec torchrun --nnodes="$NNODES" --nproc_per_node=8 --rdzv_backend=c10d \
  --rdzv_endpoint="${MASTER:?set MASTER to the first node}:${PORT:-29500}" --rdzv_id="${RDZV_ID:-vco}" \
  -m vco.cli train "${RESUME[@]}" \
  --set train.batch_size=$PER_GPU train.parallel=$PARALLEL train.compile=true "$@"
