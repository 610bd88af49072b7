# The README's two commands are `make run` and `make test`; everything else is a helper.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint migrations-check check-deploy bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the declared dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	mkdir -p var
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py seed_demo
	SERVED_AT="http://$(HOST):$(PORT)" \
		$(BIN)/uvicorn helpdesk.asgi:application --host $(HOST) --port $(PORT) --lifespan on \
		--ws-max-size 1048576

test: $(VENV)/.installed
	mkdir -p var
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(BIN)/ruff check .

migrations-check: $(VENV)/.installed
	$(BIN)/python manage.py makemigrations --check --dry-run

bench: $(VENV)/.installed
	@for script in bench/*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) var
