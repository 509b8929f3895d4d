# Convenience targets; each is the same command the README shows.
PYTHON ?= python3

.PHONY: demo test test-slow bench clean

demo:
	$(PYTHON) -m venv .venv && .venv/bin/pip install -e ".[dev]" && .venv/bin/presso demo

test:
	$(PYTHON) -m venv .venv && .venv/bin/pip install -e ".[dev,train,tvm,npu]" && .venv/bin/python -m pytest

test-slow:
	.venv/bin/python -m pytest -m slow

bench:
	for script in benchmarks/*.py; do .venv/bin/python $$script || exit 1; done

clean:
	rm -rf .venv build *.egg-info .pytest_cache .hypothesis
