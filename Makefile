# Two set-up-and-go targets: `make run` and `make test`. Each creates .venv and installs what is
# missing (once: a stamp file makes the second call fast), then does its job.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedkt-installed
# The shared CIFAR-10 copy when it is beside the checkout; else data/ (torchvision downloads there).
DATA   ?= $(firstword $(wildcard ../shared/data/cifar10-jpeg.tar.gz) data)
ARGS   ?=

.PHONY: run test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	grep -q FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION $(BIN)/activate || printf '%s\n' \
	  '# fedkt: Flower must not install the app'"'"'s dependencies per run (`flwr run` on the local simulation)' \
	  'export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1' >> $(BIN)/activate
	grep -q RAY_worker_niceness $(BIN)/activate || printf '%s\n' \
	  '# fedkt: the clients'"'"' Ray actors at the priority of the run that starts them (Ray'"'"'s default: 15 below)' \
	  'export RAY_worker_niceness=0' >> $(BIN)/activate
	touch $(STAMP)

# Hydra's -m (--multirun) must come before any override: ARGS="-m algorithm=local,ktpfl" sweeps.
run: $(STAMP)
	$(BIN)/python -m fedkt.sim $(filter -m --multirun,$(ARGS)) data.root=$(DATA) $(filter-out -m --multirun,$(ARGS))

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench_models.py

clean:
	rm -rf $(VENV) outputs/* multirun
