# translate: make help lists the targets. ARGS="key=value ..." passes Hydra overrides.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
NPROC ?= 1
BENCH_DATA ?= ../shared/data/multi30k
STAMP := $(VENV)/.installed

.PHONY: help install prepare train bleu translate bench bench-scale test lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip -c constraints.txt
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create the virtualenv (torch pinned by constraints.txt) and install translate

prepare: $(STAMP) ## download the corpus, train SentencePiece and tokenize the training split once (train does it when needed)
	$(PY) -m translate prepare $(ARGS)

train: $(STAMP) ## download the corpus, train SentencePiece and the model (ARGS="train.max_time=10 ...", NPROC=N: torchrun)
ifeq ($(NPROC),1)
	$(PY) -m translate train $(ARGS)
else
	$(PY) -m torch.distributed.run --standalone --nproc_per_node=$(NPROC) -m translate train $(ARGS)
endif

bleu: $(STAMP) ## decode the test split with the run's best checkpoint; print sacreBLEU BLEU and chrF
	$(PY) -m translate bleu $(ARGS)

translate: $(STAMP) ## translate a text file line by line (ARGS="--model runs/multi30k.en-de/best.pt input.en -o output.de")
	$(VENV)/bin/translate $(ARGS)

bench: $(STAMP) ## benchmark: throughput, decoding, time-to-BLEU, peer (ARGS="bench.quick=true bench.peer=joeynmt")
	$(PY) -m translate bench data.path=$(BENCH_DATA) run_dir=runs/bench $(ARGS)

bench-scale: $(STAMP) ## memory and time of prepare and training on 29k, 1M and 4.5M-pair corpora (ARGS="--sizes 29000 1000000")
	$(PY) -m translate.scale --multi30k $(BENCH_DATA) $(ARGS)

test: $(STAMP) ## run the test suite (no network, no ../shared needed)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP) ## ruff check and format check
	$(VENV)/bin/ruff check translate tests
	$(VENV)/bin/ruff format --check translate tests

format: $(STAMP) ## format the code with ruff
	$(VENV)/bin/ruff format translate tests
	$(VENV)/bin/ruff check --fix translate tests

clean: ## remove the virtualenv and caches (keeps data/ and runs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
