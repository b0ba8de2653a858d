# The two set-up commands of the README, and the checks CI runs. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint wheel

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

demo: $(VENV)/.installed  ## analyse the shipped digits model on its shipped images
	$(VENV)/bin/infodiscard analyze

test: $(VENV)/.installed  ## run the test suite
	$(PY) -m pytest -q

lint: $(VENV)/.installed  ## ruff lint and format check (configured in pyproject.toml)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

wheel: $(VENV)/.installed  ## build the wheel (models included as package data) into dist/
	$(PY) -m pip wheel --no-deps --no-build-isolation -w dist .
