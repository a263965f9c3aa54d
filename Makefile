# layerhub: `make dev` runs everything locally, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install; reinstalls when a requirements file changes.
INSTALLED := $(VENV)/.installed

.PHONY: dev fleet test lint bench migrate install

install: $(INSTALLED)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "layerhub needs Python 3.11 or newer (PYTHON=$(PYTHON))"; exit 1; }
	$(PYTHON) -m venv $(VENV) \
		|| { echo "could not create $(VENV): on Debian/Ubuntu, apt-get install python3-venv"; exit 1; }

$(INSTALLED): $(BIN)/python requirements.txt requirements-dev.txt
	$(BIN)/python -m pip install -r requirements-dev.txt
	$(BIN)/python -m compileall -q layerhub workers
	touch $@

dev: $(INSTALLED)
	$(BIN)/python scripts/dev.py

# N workers as N hosts (HOSTS=3 make fleet), the web server, SeaweedFS (BLOBS), on PostgreSQL (DATABASE_URL)
# and Redis: see README, "Several machines"
fleet: $(INSTALLED)
	$(BIN)/python scripts/fleet.py

test: $(INSTALLED)
	$(BIN)/pytest $(PYTEST_ARGS)

# mypy reads what to check and how from pyproject.toml: the whole project, strict.
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(INSTALLED)
	@set -e; found=0; \
	for f in bench/[!_]*.py; do \
		[ -e "$$f" ] || continue; found=1; \
		echo "== $$f"; $(BIN)/python "$$f"; \
	done; \
	[ $$found = 1 ] || echo "no benchmarks in bench/"

migrate: $(INSTALLED)
	$(BIN)/python manage.py migrate
