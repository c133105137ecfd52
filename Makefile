# The two commands that matter: `make demo` and `make test`. Each sets itself up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench soak lint fmt clean failure-model optimizer-model

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/dctwin demo

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/dctwin bench

# the failure model shipped in the package (twin/failure/default_model/): fixed seeds,
# split and hyper-parameters, so it reproduces; writes model.joblib, meta.json, MODEL_CARD.md
failure-model: $(STAMP)
	$(BIN)/dctwin failure train-default

# issue 19/26 (opt-default): the optimizer model shipped for the example site
# (twin/optimizer/default_model/): fixed seeds, periods and split; ~10 min on 2 cores
optimizer-model: $(STAMP)
	$(BIN)/dctwin optimize train-default

# 30 minutes of the demo's processes under chaos, then an audit (bench/soak.py)
soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes 30

# style, the layer contracts (pyproject.toml [tool.importlinter]) and the type checker
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
