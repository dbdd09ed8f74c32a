# Quick start: `make demo` runs the embedded default, `make test` the test suite.
# Each installs what it needs into the current Python environment first (once
# per environment). MMCV=lite (default) installs the pure-Python mmcv-lite;
# MMCV=full the compiled mmcv; MMCV=none keeps the mmcv you already have.
PYTHON ?= python3
MMCV ?= lite
PREFIX := $(shell $(PYTHON) -c 'import sys; print(sys.prefix)')
comma := ,
EXTRAS := $(if $(filter none,$(MMCV)),,$(MMCV))
TEST_EXTRAS := $(if $(EXTRAS),$(EXTRAS)$(comma)tests,tests)
STAMP := $(PREFIX)/.beit-plugin-install

.PHONY: demo test lint install install-tests

demo: $(STAMP)-runtime
	$(PYTHON) tools/train.py configs/beit_pretrain.py

test: $(STAMP)-tests
	$(PYTHON) -m pytest

lint: $(STAMP)-tests
	$(PYTHON) -m ruff check .

install: $(STAMP)-runtime
install-tests: $(STAMP)-tests

$(STAMP)-runtime: setup.py
	$(PYTHON) -m pip install -e ".[$(EXTRAS)]"
	touch $@

$(STAMP)-tests: setup.py
	$(PYTHON) -m pip install -e ".[$(TEST_EXTRAS)]"
	touch $@ $(STAMP)-runtime
