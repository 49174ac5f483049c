# Two commands on a fresh machine: `make demo` and `make test`. Both run `make setup` first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kit-setup
export WORKSPACE ?= $(CURDIR)/workspace
export TORCHDYNAMO_DISABLE ?= 1

.PHONY: setup test demo lint lock clean-workspace

setup: $(STAMP)

$(STAMP): scripts/setup.sh requirements/lock.txt pyproject.toml
	bash scripts/setup.sh
	touch $@

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest tests -q

demo: setup
	bash scripts/demo.sh

lint: setup
	$(PY) -m ruff check .

# Re-freeze after changing requirements/base.txt (needs the registries).
lock: setup
	$(VENV)/bin/pip install --quiet -r requirements/base.txt
	{ head -3 requirements/lock.txt; $(VENV)/bin/pip freeze --exclude-editable | grep -viE '^(torch|megatron-core|megatron-bridge)=='; } > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt

clean-workspace:
	rm -rf $(WORKSPACE)/cache
