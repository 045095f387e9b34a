# Quick start:  make test   (installs what is missing into .venv, then runs the tests)
VENV ?= .venv
PYTHON ?= $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install test test-fast clean-venv help

help:
	@echo "make install    create/reuse $(VENV) and install vssm_mm with mmcv/mmengine/mmdet/mmseg/mmpretrain"
	@echo "make test       install what is missing, then run the test suite"
	@echo "make test-fast  run the tests without the slow end-to-end ones"

install:
	VSSM_VENV=$(abspath $(VENV)) bash tools/install.sh

test: install
	VSSM_REQUIRE_MM_STACK=1 $(PYTHON) -m pytest $(PYTEST_ARGS)

test-fast: install
	VSSM_REQUIRE_MM_STACK=1 $(PYTHON) -m pytest -m "not slow" $(PYTEST_ARGS)

clean-venv:
	@echo "removing $(VENV) (the mmcv wheel stays cached in ~/.cache/vssm_mm)"
	rm -rf $(VENV)
