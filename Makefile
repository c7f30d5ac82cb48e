# Two commands do all set-up on a fresh machine:
#   make run    creates .venv if needed, then runs the main job on the demo config
#   make test   creates .venv if needed, then runs the test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
CONFIG ?= configs/demo.yaml

.PHONY: run test venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -qq --disable-pip-version-check --upgrade pip
	$(VENV)/bin/python -m pip install -qq --disable-pip-version-check -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/zoolens run $(CONFIG)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf runs .pytest_cache
