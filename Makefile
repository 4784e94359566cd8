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

# --compile-bytecode: every Python process (the driver, Ray's controller and workers, test subprocesses)
# would otherwise compile torch's, Ray's and pandas' sources again at import when .pyc files cannot be
# cached (read-only site-packages, PYTHONDONTWRITEBYTECODE=1): 17 s instead of 5 s per process on a
# loaded 2-core machine, long enough to push a Ray worker group past its start timeout.
env: $(UV)
	$(UV) sync --locked --compile-bytecode

.bootstrap/bin/uv:
	python3 -m venv .bootstrap
	.bootstrap/bin/python -m pip install --quiet uv

bench: env
	$(UV) run --locked python benchmarks/relevance_cost.py

clean:
	rm -rf runs .pytest_cache
