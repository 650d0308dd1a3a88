# Two commands for a new user: `make demo` and `make test`. Both create the
# virtualenv on first use; `make test` also builds the MXNet oracle venv that
# the byte-compatibility tests drive in a subprocess.
PYTHON ?= python3
VENV ?= .venv
ORACLE_VENV ?= .venv-mxnet
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
ORACLE_INSTALLED := $(ORACLE_VENV)/.installed
# The oracle pins what real MXNet 1.9.1 imports with (it breaks on numpy >= 1.24).
ORACLE_PACKAGES := mxnet==1.9.1 numpy==1.23.5 opencv-python-headless==4.11.0.86

.PHONY: demo test test-quick install oracle bench clean

demo: install
	$(VENV)/bin/facemae demo

test: install oracle
	FACEMAE_MXNET_PYTHON=$(abspath $(ORACLE_VENV))/bin/python $(PY) -m pytest

test-quick: install
	$(PY) -m pytest -m "not slow"

install: $(INSTALLED)

$(INSTALLED): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test,arcface]'
	touch $@

oracle: $(ORACLE_INSTALLED)

$(ORACLE_INSTALLED):
	test -x $(ORACLE_VENV)/bin/python || $(PYTHON) -m venv $(ORACLE_VENV)
	$(ORACLE_VENV)/bin/python -m pip install --quiet $(ORACLE_PACKAGES)
	touch $@

bench: install oracle
	FACEMAE_MXNET_PYTHON=$(abspath $(ORACLE_VENV))/bin/python $(PY) benchmarks/recordio_bench.py

clean:
	rm -rf $(VENV) $(ORACLE_VENV) work_dirs .pytest_cache
