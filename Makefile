# Two commands for a fresh machine: `make demo` and `make test`. Everything else is installed from here.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
DEMO_OUT ?= runs/demo-study

.PHONY: venv data slurm test test-fast demo bench lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Fashion-MNIST from Debian (no download); elsewhere `bnas` can fetch it where the network allows.
data:
	@if [ ! -f $(FMNIST)/t10k-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist) >/dev/null 2>&1 \
	  || echo "note: could not install Debian's dataset-fashion-mnist; real-data tests will be skipped"; fi

# Debian's slurm-wlm and munge: tests/test_study_slurm.py starts a one-node Slurm from them (as root, its own
# daemons on free ports, for seconds); without them that test is skipped and the local executor's tests remain.
slurm:
	@if ! command -v slurmctld >/dev/null && command -v apt-get >/dev/null; then \
	  ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q --no-install-recommends slurm-wlm munge) \
	  >/dev/null 2>&1 || echo "note: could not install slurm-wlm and munge; the real-Slurm test will be skipped"; fi

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: venv data slurm lint
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

# The main job end to end (configs/demo-study.json): a 3-minute BNAS-D search on 4,000 Fashion-MNIST images with
# the setting docs/study-budget.md found to move the alphas (summed arch rate 3 after a warm-up), then the found
# cell and one random cell trained alike for 90 s each; prints both test accuracies and whether the search
# settled. A rerun resumes or just reprints the table (rm -rf $(DEMO_OUT) to start over).
demo: venv data
	$(BIN)/bnas study --config configs/demo-study.json --out $(DEMO_OUT)

# The tables of docs/benchmarks.md (about 35 min on 2 cores). Nothing here runs in `make test`.
BENCH_OUT ?= benchmarks/results/local
bench: venv
	$(BIN)/python benchmarks/bench_table.py --methods clr,pc --orders 1,2 --only published,fast --rounds 3 \
	  --out $(BENCH_OUT)/main.jsonl
	$(BIN)/python benchmarks/bench_table.py --methods clr,pc --orders 1,2 --only plain,fast-cl,fast-batch,fast-malloc --rounds 1 \
	  --out $(BENCH_OUT)/switches.jsonl
	$(BIN)/python benchmarks/bench_table.py --methods clr,pc --orders 1 --only fast,fast+bf16 --rounds 1 --steps 3 \
	  --warmup 1 --out $(BENCH_OUT)/bf16.jsonl

format: venv
	$(BIN)/ruff format src tests
	$(BIN)/ruff check --fix src tests

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
