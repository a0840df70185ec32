# titlegen: `make install` then `make test`. Variables: PYTHON, CONFIG, ARGS, IN, OUT, MODEL.
PYTHON ?= python3
TORCH ?= torch==2.13.0
CONFIG ?= trainer_args/mt5_small_full.yaml
RL_CONFIG ?= trainer_args/rl_scst.yaml
MODEL ?= outputs/mt5_small_full
OUT ?= predictions.jsonl
ARGS ?=
DATA := ../shared/data

.PHONY: install test lint train predict eval demo bench

install:  ## torch first (pinned, so pip does not pull a CUDA build on CPU machines), then titlegen
	$(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## the whole suite, CPU only (a few minutes)
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

train:  ## make train [CONFIG=trainer_args/x.yaml] [ARGS="--key value ..."]
	titlegen-train --config $(CONFIG) $(ARGS)

predict:  ## make predict IN=public.jsonl [OUT=predictions.jsonl] [MODEL=outputs/...]
	@test -n "$(IN)" || { echo "usage: make predict IN=path.jsonl [OUT=...] [MODEL=...]"; exit 2; }
	TITLEGEN_MODEL=$(MODEL) bash run.sh $(IN) $(OUT) $(ARGS)

.PHONY: serve
serve:  ## make serve MODEL=outputs/tiny_offline [ARGS="--port 8080 --strategy beam"]: the HTTP API and page (README: serving)
	titlegen-serve --model $(MODEL) $(ARGS)

.PHONY: rl
rl:  ## make rl ARGS="--model outputs/tiny_offline [--key value ...]" [RL_CONFIG=trainer_args/rl_scst.yaml]
	titlegen-rl --config $(RL_CONFIG) $(ARGS)

demo:  ## offline, ~10 minutes on 2 CPU cores: train from scratch on LCSTS, predict the course sample, score
	rm -rf outputs/demo
	titlegen-train --config trainer_args/tiny_offline.yaml --output_dir outputs/demo $(ARGS)
	TITLEGEN_MODEL=outputs/demo bash run.sh $(DATA)/adl-news/sample_test.jsonl outputs/demo/sample_predictions.jsonl
	titlegen-eval -r $(DATA)/adl-news/sample_submission.jsonl -s outputs/demo/sample_predictions.jsonl --segmenter char
	titlegen-eval -r $(DATA)/adl-news/sample_submission.jsonl -s outputs/demo/sample_predictions.jsonl --segmenter auto
	@head -n 5 outputs/demo/sample_predictions.jsonl

bench:  ## every benchmark in bench/ on real data (see bench/README.md; the quality one trains for 40 minutes)
	for f in bench/[!_]*.py; do echo "== $$f"; $(PYTHON) -m bench.$$(basename $$f .py) $(ARGS) || exit 1; done

.PHONY: bench-peft
bench-peft:  ## trainable parameters, s/step and peak memory: full, LoRA, decoder-only, pruned vocabulary (~10 min)
	$(PYTHON) -m bench.peft_cost $(ARGS)
