# kdcli: every experiment of the seed documents is a target here.
# `make demo` and `make test` work on a fresh clone with only python3 and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
KDCLI  := $(BIN)/kdcli
STAMP  := $(VENV)/.installed
DATA_DIR ?= data
REPORTS  ?= reports
export KDCLI_STORE ?= artifacts

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/python -m kdcli.recipes demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check kdcli tests bench

clean:
	rm -rf $(VENV) artifacts $(REPORTS)
