# Two commands on a fresh machine: `make train` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
# torch first, pinned: on a machine without torch an unpinned install may pull a multi-GB build.
# GPU users: `make TORCH="torch>=2.2" ...` or any torch you already have.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

.PHONY: setup train test lint benchmark bench-solve bench-rollout bench-mujoco bench-warp gpu-check
setup: $(BIN)/.installed

train: setup
	$(BIN)/flipes train $(ARGS)

# One pytest-xdist worker per core, at most 4 (TEST_JOBS=0: one process); work stealing keeps both
# busy while the long subprocess tests run (2 cores: about 1.8x faster than one process).
# PYTHONDONTWRITEBYTECODE emptied: where a machine sets it (ours do), each process a test starts compiles flipes
# from source and each worker rewrites every test module; with caches: 10% less CPU in subprocess tests, 40% in collection.
TEST_JOBS ?= auto
test: setup
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n $(TEST_JOBS) --maxprocesses 4 --dist worksteal tests $(ARGS)

# both halves of the project's lint: the rules, and the formatting ruff format would give (pyproject.toml's [tool.ruff])
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Where make bench-NAME writes its results: scripts/results/NAME, or NAME_quick (ignored by git) for a smoke run
# (ARGS="--quick true"), which would otherwise write its few steps' numbers over the committed ones.
RESULTS = scripts/results/$(1)$(if $(findstring --quick,$(ARGS)),_quick)

benchmark: setup
	$(BIN)/python scripts/benchmark.py $(ARGS)

# Time to solve, flipes vs EvoTorch and evosax (scripts/bench_solve.py). EvoTorch (with ray, pandas, matplotlib)
# is not a dependency of flipes: it goes into its own venv so that .venv and the tests stay clean.
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install -q "$(TORCH)"
	$(BENCH_VENV)/bin/pip install -q -e '.[mujoco]' evotorch==0.6.1
	touch $@

# evosax's CartPole beside them needs JAX, evosax and gymnax: their own venv too (CPU wheels). bench_solve.py runs
# it as a subprocess of that venv's python, so flipes never imports JAX. gymnax 1.0.1 imports six without
# declaring it.
JAX_VENV ?= .venv-jax
$(JAX_VENV)/.installed:
	$(PYTHON) -m venv $(JAX_VENV)
	$(JAX_VENV)/bin/pip install -q "jax[cpu]==0.10.2" evosax==0.3.2 gymnax==1.0.1 six
	touch $@

bench-solve: $(BENCH_VENV)/.installed $(JAX_VENV)/.installed
	$(BENCH_VENV)/bin/python scripts/bench_solve.py --json $(call RESULTS,bench_solve).json \
		--evosax-python $(JAX_VENV)/bin/python $(ARGS)

# Rollout steps/s per env engine (scripts/bench_rollout.py), and MuJoCo training beside EvoTorch
# (scripts/bench_mujoco.py, ~90 min); results go to scripts/results/.
bench-rollout: setup
	$(BIN)/python scripts/bench_rollout.py --json $(call RESULTS,bench_rollout).json --markdown $(call RESULTS,bench_rollout).md $(ARGS)

bench-mujoco: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python scripts/bench_mujoco.py --json $(call RESULTS,bench_mujoco).json \
		--markdown $(call RESULTS,bench_mujoco).md $(ARGS)

# Env steps/s of flipes' MuJoCo envs on MuJoCo Warp beside EnvPool and gymnasium (scripts/bench_warp.py, ~10 min)
bench-warp: setup
	$(BIN)/python scripts/bench_warp.py --json $(call RESULTS,bench_warp).json --markdown $(call RESULTS,bench_warp).md $(ARGS)

# The prepared check for a lent GPU (scripts/gpu_check.py): correctness, then speed, <= 8 minutes.
gpu-check: setup
	$(BIN)/python scripts/gpu_check.py $(ARGS)
