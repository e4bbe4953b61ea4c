# Two entry points: `make demo` (the main job on embedded defaults) and `make test` (the whole suite).
# Both build .venv from uv.lock on first use and reuse it while the lock is unchanged.
PYTHON ?= python3.11
UV_VERSION := 0.13.8
UV := .tools/bin/uv
VENV_STAMP := .venv/.synced-lock

# No traffic may leave the machine.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export UV_PYTHON_DOWNLOADS := never
# The temporary Prefect server of `enrich run` and the demo takes ~10-20 s to start on a busy
# 2-core machine; the default 20 s timeout is too tight there.
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90

.PHONY: install test lint typecheck pytest demo lock bench screenshots clean

install: $(VENV_STAMP)

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

$(VENV_STAMP): uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --python $(PYTHON)
	cp uv.lock $@

lint: install
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

typecheck: install
	.venv/bin/mypy

pytest: install
	.venv/bin/pytest

test: lint typecheck pytest

demo: install
	.venv/bin/python -m flows.demo

bench: install
	.venv/bin/python benchmarks/emulator_throughput.py
	.venv/bin/python benchmarks/local_overhead.py
	.venv/bin/python benchmarks/validation.py
	.venv/bin/python benchmarks/cache_lookup.py
	.venv/bin/python benchmarks/similar.py
	.venv/bin/python benchmarks/chaos.py --kills 9 --seed 1

# The README's screenshots (docs/screenshots/*.png) from a real Prefect UI; needs Debian's chromium.
screenshots: install
	.venv/bin/python docs/screenshots.py

# Re-resolve the lock after editing pyproject.toml dependencies (see README, "Updating the lock").
lock: | $(UV)
	$(UV) lock

clean:
	rm -rf .venv .tools .pytest_cache .mypy_cache .ruff_cache
