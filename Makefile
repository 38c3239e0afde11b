# Every target does its own set-up: on a fresh machine `make demo` and `make test` just work.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench chaos lint clean

install: $(STAMP)

$(STAMP): pyproject.toml $(wildcard ftml/*.c)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m ftml.demo

# Everything: the suite on both cores (pytest-xdist, a file per worker), then the short live
# chaos run (about 3 minutes) alone, since it times a live service and must not share the CPU
# with the suite (`make chaos-test` runs it alone).
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile -m "not chaos"
	$(BIN)/python -m pytest -q -m chaos

chaos-test: install
	$(BIN)/python -m pytest -q -m chaos

# The generalization benchmark's baselines (PyOD) are a bench-only extra.
bench: install
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m bench

# A real service under load, 12 injected faults, a cascade (a callee's fault that its caller
# feels), two benign disturbances, ftml watch --mode auto: see docs/chaos.md.
chaos: install
	$(BIN)/python -m examples.live.chaos --cascade

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
