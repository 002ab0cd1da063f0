# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: test lint demo demo-long install system-deps perf clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned, so the CPU wheel on disk is used instead of a CUDA build
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,h5,fluidsynth]"
	touch $(STAMP)

install: $(STAMP)

# Optional system synthesizer for the built-in corpus; everything works without it
# (pure-numpy fallback renderer).
system-deps:
	@bash scripts/system-deps.sh || true

test: install system-deps lint
	$(PY) -m pytest -q

# The layering of docs/ARCHITECTURE.md (imports point down; contract in pyproject.toml) and
# pyflakes-level checks (unused / undefined names).
lint: install
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check --select F src

demo: install system-deps
	$(VENV)/bin/m3bert demo --out demo_out

# The longer run (about 70 min on 2 idle cores): 2400 pre-training steps on every registered real-music
# package (15 h), MARBLE's layer grid, 5-fold cross-validation on the held-out tasks (docs/demo-long.md).
# Resumable like make demo.
demo-long: install system-deps
	$(VENV)/bin/m3bert demo --preset long --out demo_long_out

perf: install
	$(PY) perf/features.py
	$(PY) perf/pretrain.py
	$(PY) perf/embed.py
	$(PY) perf/probes.py
	$(PY) perf/store.py
	$(PY) perf/waveform.py

clean:
	rm -rf $(VENV) demo_out .pytest_cache
