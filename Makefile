# The two set-up commands of the README: `make run` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
# CPU build of torch on machines without a GPU; override e.g. `make TORCH_SPEC=torch run` for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: install run test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[torch,mpi,video,workflow,test]"
	touch $@

run: install
	$(BIN)/python -m gradvis_steps.train --dataset digits --model lenet --epochs 6 --batch-size 64 \
		--lr 0.05 --seed 0 --out results/digits-lenet-seed0/trajectory.h5

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) results .snakemake
