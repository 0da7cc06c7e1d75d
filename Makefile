# Quick start: `make demo` and `make test` on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -e '.[test,tfds,plots,bench]'
	@# Bytecode for what the package, its tests and their extras import, written by two processes at once (about
	@# 13 s), instead of pip's compiling of all ~19,000 installed files (47 of the install's 73 s). A module left out is
	@# compiled when first imported, as without a .pyc.
	@PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q --collect-only -p no:cacheprovider tests > /dev/null & \
	  PYTHONDONTWRITEBYTECODE= $(BIN)/python -c 'import torch, transformers, mergekit.merge, tensorflow_datasets, \
	  rouge_score.rouge_scorer' & wait
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m experiments.main --config=configs/salun.py:mnist1d --workdir=workdir/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

clean:
	rm -rf workdir
