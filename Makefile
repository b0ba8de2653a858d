# The two set-up commands of the README. Each creates .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

demo: $(VENV)/.installed  ## analyse the shipped digits model on its shipped images
	$(VENV)/bin/infodiscard analyze

test: $(VENV)/.installed  ## run the test suite
	$(PY) -m pytest -q
