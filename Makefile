# The two commands of the README. Both install everything they need on a fresh machine that has
# Python 3.10+ and access to PyPI: uv (bootstrapped into .bootstrap/ if not on PATH), then the
# locked environment (.venv/ from uv.lock).
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo .bootstrap/bin/uv)
PYTEST_ARGS ?=

.PHONY: demo test env bench clean

demo: env
	$(UV) run --locked singe-dist demo

test: env
	$(UV) run --locked python -m pytest $(PYTEST_ARGS)

env: $(UV)
	$(UV) sync --locked

.bootstrap/bin/uv:
	python3 -m venv .bootstrap
	.bootstrap/bin/python -m pip install --quiet uv

bench: env
	$(UV) run --locked python benchmarks/relevance_cost.py

clean:
	rm -rf runs .pytest_cache
