# Two commands matter: `make bench` and `make test`. Each installs everything it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUITE ?= documents
RESULTS ?= results
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 1)
DATA_DIR ?=
FMNIST_DEB := /usr/share/datasets/fashion-mnist
FMNIST_RAW := data/FashionMNIST/raw

.PHONY: help install kernels deploy-speed data browser test test-fast gpu-check bench tables report wandb-sync overhead clean
.DEFAULT_GOAL := help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  variables: SUITE=$(SUITE) (conf/suite/*.yaml), RESULTS=$(RESULTS), DATA_DIR=$(DATA_DIR) (data.root: the dataset folder)"

install: $(VENV)/.installed data kernels  ## create .venv with the pinned packages, make Fashion-MNIST available, build the binary kernels

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $@

kernels: $(VENV)/.installed  ## compile the deploy step's packed-bit binary kernels (gcc, ~1 s; cached by source hash, LWB_KERNEL_CACHE)
	$(PY) -m lightning_modules.deploy.binary --build || echo "warning: binary kernels not built: deploy=auto runs ONNX Runtime instead"

data: $(VENV)/.installed  ## Fashion-MNIST raw files under data/ (Debian package dataset-fashion-mnist, else torchvision download)
	@if [ ! -d $(FMNIST_DEB) ] && [ ! -s $(FMNIST_RAW)/t10k-labels-idx1-ubyte ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi
	$(PY) -m datamodules.fashion_mnist --prepare

browser:  ## Debian's chromium + chromium-driver (the report test renders the page in it)
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing Debian packages chromium chromium-driver"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
		else echo "no chromium: the report's browser test will be skipped (apt-get install chromium chromium-driver)"; fi; \
	fi

test: install browser  ## run the test suite (CPU; TEST_WORKERS=N processes, default one per core, one torch thread each)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15

test-fast: install  ## the tests without the `slow` (processes, browser, Trainer fits) and `gpu` ones
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow and not gpu"

gpu-check: install  ## on a GPU machine: every GPU path once (< 10 min, results/tables/gpu_check.md), then the `gpu` tests
	$(PY) -m benchmarks.gpu_check --results-dir $(RESULTS); rc=$$?; \
	$(PY) -m pytest -q -m gpu; exit $$(( rc || $$? ))

bench: install  ## run suite SUITE (default: documents, the documents' table, ~6 min on 2 cores), write results/tables/SUITE.{md,csv,html}, rebuild the report; DATA_DIR sets data.root
	$(PY) -m benchmarks.suite $(SUITE) --results-dir $(RESULTS) $(if $(DATA_DIR),data.root=$(abspath $(DATA_DIR))); rc=$$?; \
	$(PY) -m benchmarks.report --results-dir $(RESULTS); exit $$rc

tables: install  ## rebuild every committed results/tables/<suite>.* from the committed records under results/runs/<suite>/, then README.md's table blocks
	$(PY) -m benchmarks.tables_from_records --results-dir $(RESULTS)
	$(PY) -m benchmarks.readme

report: install  ## results/report/index.html (+ PNG plots) from every record under results/runs
	$(PY) -m benchmarks.report --results-dir $(RESULTS)

wandb-sync: install  ## upload the offline W&B runs under results/wandb (needs WANDB_API_KEY)
	@ls -d $(RESULTS)/wandb/offline-run-* >/dev/null 2>&1 || { echo "no offline runs under $(RESULTS)/wandb"; exit 1; }
	$(VENV)/bin/wandb sync --yes $(RESULTS)/wandb/offline-run-*

deploy-speed: install  ## deployed speed: binary kernels and ONNX Runtime integer vs FP32, layers and nets (QUICK=1: < 10 min)
	$(PY) -m benchmarks.deploy_speed $(if $(QUICK),--quick) --results-dir $(RESULTS)

overhead: install  ## harness vs hand-written PyTorch loop, training throughput (LeNet-300-100)
	$(PY) -m benchmarks.overhead

clean:  ## remove the venv and the runs' model files, checkpoints and logs (keeps records and tables)
	rm -rf $(VENV) $(RESULTS)/wandb .pytest_cache
	if [ -d $(RESULTS)/runs ]; then find $(RESULTS)/runs -type f ! -name record.json -delete; \
		find $(RESULTS)/runs -mindepth 1 -type d -empty -delete; fi
