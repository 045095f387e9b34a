# Quick start:  make test   (installs what is missing into .venv, then runs the tests)
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install test check-cuda-build test-fast demo demo-cls demo-seg clean-venv help gpu-check gpu-check-wheels

help:
	@echo "make install    create/reuse $(VENV) and install vssm_mm with mmcv/mmengine/mmdet/mmseg/mmpretrain"
	@echo "make test       install what is missing, then run the test suite"
	@echo "make check-cuda-build  compile and link the CUDA extension (needs nvcc, not a GPU)"
	@echo "make test-fast  run the tests without the slow end-to-end ones"
	@echo "make gpu-check  on a GPU machine: build, test, sanitize and benchmark every GPU path (~8 min)"
	@echo "make gpu-check-wheels  download here the wheels gpu-check needs on a GPU machine without network"
	@echo "make demo       train MSVMamba-Nano Mask R-CNN on generated data (CPU, minutes) and show it learned"
	@echo "make demo-cls   the same for image classification"
	@echo "make demo-seg   the same for semantic segmentation (UperNet)"

install:
	VSSM_VENV=$(abspath $(VENV)) bash tools/install.sh

test: install check-cuda-build
	VSSM_REQUIRE_MM_STACK=1 $(PYTHON) -m pytest $(PYTEST_ARGS)

# Compile-and-link check of csrc/ (no GPU needed; skipped without nvcc; cached by a source hash).
check-cuda-build: install
	$(PYTHON) tools/check_cuda_build.py

test-fast: install
	VSSM_REQUIRE_MM_STACK=1 $(PYTHON) -m pytest -m "not slow" $(PYTEST_ARGS)

demo: install
	$(PYTHON) tools/run_demo.py --task det

demo-cls: install
	$(PYTHON) tools/run_demo.py --task cls

demo-seg: install
	$(PYTHON) tools/run_demo.py --task seg

clean-venv:
	@echo "removing $(VENV) (the mmcv wheel stays cached in ~/.cache/vssm_mm)"
	rm -rf $(VENV)

# One command on a GPU machine (docs/benchmarks.md, "GPU check"). It uses the machine's own
# python3 with its torch and Triton, never $(VENV): with wheels in $(WHEEL_DIR) (made here by
# `make gpu-check-wheels`) it installs them into $(GPU_SITE) first, offline.
GPU_PYTHON ?= python3
GPU_CHECK_OUT ?= gpu_check_report
GPU_CHECK_ARGS ?=
WHEEL_DIR ?= .whl
GPU_SITE ?= /tmp/vssm_gpu_check_site

gpu-check:
	@if ls $(WHEEL_DIR)/*.whl >/dev/null 2>&1; then \
		$(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --upgrade \
			--target $(GPU_SITE) $(WHEEL_DIR)/*.whl || exit 1; \
	else echo "[gpu-check] no wheels in $(WHEEL_DIR)/: using the installed packages"; fi
	PYTHONPATH=$(GPU_SITE):$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH} \
		$(GPU_PYTHON) tools/gpu_check.py --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)

gpu-check-wheels:
	WHEEL_DIR=$(WHEEL_DIR) bash tools/gpu_check_wheels.sh
