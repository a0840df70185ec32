# titlegen: `make install` then `make test`. Variables: PYTHON, DATA, CONFIG, ARGS, IN, OUT, MODEL.
PYTHON ?= python3
TORCH ?= torch==2.13.0
CONFIG ?= trainer_args/mt5_small_full.yaml
RL_CONFIG ?= trainer_args/rl_scst.yaml
MODEL ?= outputs/mt5_small_full
OUT ?= predictions.jsonl
ARGS ?=

# Where titlegen is installed and runs: PYTHON's own environment when it is a virtual one (an active one
# included), else .venv, which `make install` creates (a system Python such as Debian's refuses pip, PEP 668).
VENV := .venv
ifeq ($(shell $(PYTHON) -c "import sys; print(sys.prefix != sys.base_prefix)" 2>/dev/null),True)
  PY := $(PYTHON)
  BIN := $(shell $(PYTHON) -c "import os, sys; print(os.path.dirname(sys.executable))")
else
  PY := $(VENV)/bin/python
  BIN := $(VENV)/bin
endif
export PATH := $(abspath $(BIN)):$(PATH)

# The data folder: DATA=DIR or $$TITLEGEN_DATA, else ../shared/data where present, else where titlegen-data
# writes (titlegen/corpus.py). Passed on as TITLEGEN_DATA, which the configs' paths name.
DATA ?= $(TITLEGEN_DATA)
CHOSEN_DATA := $(DATA)
ifeq ($(DATA),)
  DATA := $(shell $(PY) -c "from titlegen.corpus import data_dir; print(data_dir())" 2>/dev/null)
endif
export TITLEGEN_DATA := $(DATA)
# Gets the data folder with titlegen-data when it lacks LCSTS: a new machine needs only `make install` first.
FETCH_DATA = test -f "$(DATA)/lcsts/train.zh-tw.jsonl" || titlegen-data $(if $(DATA),--output_dir "$(DATA)")

.PHONY: help install test test-fast lint train predict demo bench data

help:  ## this list (`make` alone prints it too)
	@awk -F':[^#]*## ' '/^[a-z-]+:[^#]*## / {printf "  make %-11s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install:  ## into PYTHON's virtual environment, else into .venv (created): torch first (pinned, so pip does not pull a CUDA build on CPU machines), then titlegen
	@test "$(PY)" = "$(PYTHON)" || test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[dev]"

test:  ## the whole suite, CPU only (a few minutes); gets the data first if missing (offline: its tests skip, saying why)
	@$(FETCH_DATA) || echo "note: no data in '$(DATA)' (no network?): the tests that read it are skipped"
	$(PY) -m pytest -q -rs

test-fast:  ## the suite without the tests marked slow (training runs, launchers, browser): under a minute
	$(PY) -m pytest -q -m "not slow"

lint:  ## ruff: lint and formatting
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

data:  ## download LCSTS and the course sample, checksums checked, into DATA if given, else ~/.cache/titlegen/data
	titlegen-data --output_dir $(or $(CHOSEN_DATA),$(shell $(PY) -c \
		"from titlegen.corpus import default_download_dir; print(default_download_dir())")) $(ARGS)

train:  ## titlegen-train [CONFIG=trainer_args/x.yaml] [ARGS="--key value ..."]
	titlegen-train --config $(CONFIG) $(ARGS)

predict:  ## run.sh: IN=public.jsonl [OUT=predictions.jsonl] [MODEL=outputs/...]
	@test -n "$(IN)" || { echo "usage: make predict IN=path.jsonl [OUT=...] [MODEL=...]"; exit 2; }
	TITLEGEN_MODEL=$(MODEL) PYTHON=$(PY) bash run.sh $(IN) $(OUT) $(ARGS)

.PHONY: serve
serve:  ## titlegen-serve, the HTTP API and page: MODEL=outputs/tiny_offline [ARGS="--port 8080 --strategy beam"]
	titlegen-serve --model $(MODEL) $(ARGS)

.PHONY: rl
rl:  ## titlegen-rl: ARGS="--model outputs/tiny_offline [--key value ...]" [RL_CONFIG=trainer_args/rl_scst.yaml]
	titlegen-rl --config $(RL_CONFIG) $(ARGS)

demo:  ## under 10 minutes on 2 CPU cores: get the data if missing, train from scratch on LCSTS, title the course sample, score, show
	@$(FETCH_DATA) || { echo "no LCSTS in '$(DATA)' and titlegen-data could not get it: see above, or set DATA=DIR"; exit 2; }
	rm -rf outputs/demo
	titlegen-train --config trainer_args/tiny_offline.yaml --output_dir outputs/demo $(ARGS)
	TITLEGEN_MODEL=outputs/demo PYTHON=$(PY) bash run.sh $(DATA)/adl-news/sample_test.jsonl outputs/demo/sample_predictions.jsonl
	titlegen-showcase --articles $(DATA)/adl-news/sample_test.jsonl \
		--references $(DATA)/adl-news/sample_submission.jsonl --predictions outputs/demo/sample_predictions.jsonl

bench:  ## every benchmark in bench/ on real data (see bench/README.md; the quality one trains for 40 minutes)
	for f in bench/[!_]*.py; do echo "== $$f"; $(PY) -m bench.$$(basename $$f .py) $(ARGS) || exit 1; done

.PHONY: bench-peft
bench-peft:  ## trainable parameters, s/step and peak memory: full, LoRA, decoder-only, pruned vocabulary (~10 min)
	$(PY) -m bench.peft_cost $(ARGS)
