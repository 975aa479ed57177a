# make setup | fit | test | test-cluster | lint | bench
# Every target creates .venv on first use; nothing needs to be installed by hand.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# CPU wheel by default so a laptop never downloads a multi-GB CUDA build.
# GPU users: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0
CONFIG  ?= configs/sentiment/sst2_bilstm.yaml
ARGS    ?=

.PHONY: setup fit test test-cluster lint format bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

fit: setup
	$(BIN)/python -m pipeline.fit --config $(CONFIG) $(ARGS)

test: setup
	$(BIN)/python -m pytest -q $(ARGS)

# Installs and starts real one-node and two-node SLURM clusters (network namespaces) and builds the Docker image
# with buildah (needs root).
# The repeated-preemption soak test: make test-cluster ARGS='-m "cluster and slow"'.
test-cluster: setup
	$(BIN)/python -m pytest -q -m "cluster and not slow" $(ARGS)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python benchmarks/sentiment.py

clean:
	rm -rf runs wandb lightning_logs .pytest_cache
