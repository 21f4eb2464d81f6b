# The two set-up commands of the README: `make run` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
# CPU build of torch on machines without a GPU; override e.g. `make TORCH_SPEC=torch run` for a CUDA build.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: install install-test run test lint bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[torch,mpi,mpich,video,workflow,test]"
	touch $@

# The tests also cover the TensorFlow backend: its extra (tensorflow-cpu, about 1.4 GB) only here, not for `make run`.
install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[tensorflow]"
	touch $@

# The main job: the whole workflow on the embedded default config, then the HTML report.
run: install
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --profile profiles/default
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores 1 --profile profiles/default --report results/report.html

lint: install-test
	$(BIN)/ruff check .

test: install-test lint
	$(BIN)/python -m pytest

# The comparison with PyHessian (bench/README.md): the bench extra (pyhessian, psutil) into the venv, then a small
# CPU run of bench/pyhessian_compare.py (LeNet, 256 synthetic CIFAR-shaped samples, SLQ 2 x 20; a few minutes).
bench: install
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python bench/pyhessian_compare.py --device cpu --models lenet --samples 256 --batch-size 128 --k 2 --m 20 \
		--repeats 3

clean:
	rm -rf $(VENV) results results-test .snakemake
