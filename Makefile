# sightline: `make run` reproduces the pipeline, `make test` runs the fast tests.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
MODEL  ?= classifier
HOST   ?= 127.0.0.1
PORT   ?= 3000
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help setup system data run test test-slow lint format docs docs-serve bench bench-serve bench-spam bench-precision bench-features bench-tta bench-peers gpu-check reproduce-check compare package serve sweep experiment curve spread promote push pull clean

help: ## show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install sightline with its dev tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

system: ## install the tesseract command (OCR of the spam model) when it is missing and apt is usable
	@if command -v tesseract >/dev/null 2>&1; then \
	  echo "OCR: $$(tesseract --version 2>&1 | head -n 1)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tesseract-ocr tesseract-ocr-eng >/dev/null; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
	  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends tesseract-ocr tesseract-ocr-eng >/dev/null; \
	else \
	  echo "install Tesseract OCR (tesseract-ocr, or brew install tesseract): the spam model reads the words in images" >&2; exit 1; \
	fi

data: ## install Debian's dataset-fashion-mnist when it is missing and apt is usable
	@if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
	  sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "dataset-fashion-mnist not installable here; prepare falls back to torchvision's download"; \
	fi

run: setup system data ## set up, then reproduce the whole pipeline (dvc repro)
	$(BIN)/dvc repro

test: setup system ## set up, then run the fast tests (tiny configs, synthetic data) and build the docs (strict)
	$(BIN)/python -m pytest -m "not slow and not gpu" --durations=15
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir $${TMPDIR:-/tmp}/sightline-site

docs: setup ## results tables from metrics/*.json into README.md and docs/, then the site into site/ (MkDocs, strict)
	$(BIN)/python pipeline/docs.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: setup ## preview the documentation site at http://127.0.0.1:8000
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

test-slow: setup system data ## real-data tests (several minutes)
	$(BIN)/python -m pytest -m slow

lint: setup ## ruff lint + format check, the import layers (lint-imports), known advisories of the dependencies
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/pip-audit --skip-editable --progress-spinner off

format: setup ## apply ruff fixes and formatting
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: setup data ## Lightning vs plain PyTorch training throughput
	$(BIN)/python benchmarks/train_throughput.py

bench-tta: setup data ## time to accuracy: each model's recipe beside HEAD's params (BASELINE=<rev>, MODELS=...), one run
	$(BIN)/python benchmarks/time_to_accuracy.py --baseline $(or $(BASELINE),HEAD) $(if $(MODELS),--models $(MODELS))

bench-peers: setup data ## the VAE and the GAN beside their reference peers (pytorch/examples, Lightning), same data and wall time
	$(BIN)/python benchmarks/peers.py $(if $(MODELS),--models $(MODELS))

package: setup ## BentoML models + the sightline Bento from the trained models (dvc repro package)
	$(BIN)/dvc repro package

serve: setup ## serve the workspace's Bento on 127.0.0.1:3000 (HOST=0.0.0.0 for every interface), after make package
	$(BIN)/bentoml serve $$($(BIN)/python -c "import json; print(json.load(open('bento/bento.json'))['bento'])") --host $(HOST) --port $(PORT)

sweep: setup ## Optuna search of sweeps.MODEL in params.yaml, one DVC experiment per trial, until TRIALS (8) are done; resumes; STUDY=, STORAGE= share a study between workers
	$(BIN)/python pipeline/sweep.py $(MODEL) --trials $(or $(TRIALS),8) $(if $(STUDY),--study $(STUDY)) $(if $(STORAGE),--storage $(STORAGE))

experiment: setup ## one DVC experiment from a params profile: PROFILE=params/cifar10.yaml; MODELS="classifier" runs only those models; NAME=, QUEUE=1
	$(BIN)/python pipeline/experiment.py $(or $(PROFILE),params/cifar10.yaml) $(if $(MODELS),--models $(MODELS)) $(if $(NAME),--name $(NAME)) $(if $(QUEUE),--queue)

curve: setup ## the transfer model's learning curve (from scratch, frozen, fine-tuned; 10 to all images per class) -> reports/curves/transfer/learning_curve.{json,png}; SIZES="10 100", METHODS="frozen", OUT=<folder>
	$(BIN)/python pipeline/learning_curve.py $(if $(SIZES),--sizes $(SIZES)) $(if $(METHODS),--methods $(METHODS)) $(if $(OUT),--out $(OUT))

promote: setup ## serve the best DVC experiment of MODEL (or EXP=<name>; FORCE=1 if it is worse or inside the seed spread)
	$(BIN)/python pipeline/promote.py $(MODEL) $(if $(EXP),--exp $(EXP)) $(if $(FORCE),--force)

spread: setup ## train and evaluate MODEL with SEEDS (3) seeds -> metrics/spread/MODEL.json (the ± of make compare)
	$(BIN)/python pipeline/spread.py $(MODEL) --seeds $(or $(SEEDS),3)

bench-serve: setup ## load test of the served classifier vs the in-process model
	$(BIN)/python benchmarks/serve_load.py

gpu-check: $(if $(USE_PYTHON),,setup) ## on a CUDA machine: every model trains a few steps there, then the served classifier under load with gpu: 1 (slow on a CPU); USE_PYTHON=python3: an interpreter that has the Bento's packages and pytest, no .venv, nothing installed
	$(if $(USE_PYTHON),PYTHONPATH=src$${PYTHONPATH:+:$$PYTHONPATH} $(USE_PYTHON),$(BIN)/python) -m pytest -m gpu -s -q -p no:cacheprovider tests/test_gpu.py tests/test_models.py

bench-precision: setup data ## what precision: auto picks here, and each model's training step in float32 and bf16 (MODELS=...), one run
	$(BIN)/python benchmarks/precision.py $(if $(MODELS),--models $(MODELS))

bench-features: setup ## the transfer features stage's images/s beside its backbone's forward rate, one run (after dvc repro features)
	$(BIN)/python benchmarks/transfer_features.py

bench-spam: setup system ## the served spam filter on image spam: latency, errors, words read (after make package)
	$(BIN)/python benchmarks/serve_spam.py

reproduce-check: setup system data ## retrain MODEL (default classifier) from scratch, compare with metrics/$(MODEL).json
	$(BIN)/python pipeline/check_reproducible.py $(MODEL)

compare: setup ## leaderboard of the models and their DVC experiments -> reports/leaderboard.{md,html}; ALL=1: experiments of every commit
	$(BIN)/python pipeline/compare.py $(if $(ALL),--all-commits)

push: setup ## send what dvc.lock names (prepared data, models, the Bento) to the DVC remote; EXP=<name> also pushes that experiment (GIT_REMOTE=origin)
	$(BIN)/dvc push
	$(if $(EXP),$(BIN)/dvc exp push $(or $(GIT_REMOTE),origin) $(EXP))

pull: setup ## fetch what dvc.lock names from the DVC remote and put the Bento into the BentoML store: make serve then needs no training
	$(BIN)/dvc pull
	$(BIN)/python pipeline/restore.py

clean: ## remove run scratch and caches (keeps data, models and metrics)
	rm -rf runs .pytest_cache .ruff_cache
