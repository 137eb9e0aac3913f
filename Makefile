# make setup : create the virtual environment $(VENV) if missing and install the course into it
# make lab   : setup, then open JupyterLab on notebooks/
# make test  : setup, then run the whole test suite (unit tests + every notebook) with TFS_PROFILE=ci
# make assignments / make autograde : student versions of the notebooks, and grading (nbgrader)

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.tfs-requirements

PYTEST_ARGS ?=

.PHONY: setup lab test unit notebooks lint assignments autograde

setup: $(STAMP)
	@$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# Reinstall only when requirements.txt changes (its hash is kept in the stamp).
$(STAMP): requirements.txt $(BIN)/python
	@if [ "$$(sha256sum requirements.txt | cut -d' ' -f1)" != "$$(cat $(STAMP) 2>/dev/null)" ]; then \
		echo "Installing requirements.txt into $(VENV) ..."; \
		$(BIN)/python -m pip install -r requirements.txt && \
		sha256sum requirements.txt | cut -d' ' -f1 > $(STAMP); \
	fi

lab: setup
	$(BIN)/jupyter lab notebooks/

test: setup
	TFS_PROFILE=ci $(BIN)/python -m pytest tests notebooks \
		--nbval-lax --nbval-cell-timeout=900 -p no:cacheprovider $(PYTEST_ARGS)

unit: setup
	TFS_PROFILE=ci $(BIN)/python -m pytest tests $(PYTEST_ARGS)

notebooks: setup
	TFS_PROFILE=ci $(BIN)/python -m pytest notebooks --nbval-lax --nbval-cell-timeout=900 $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

# Student versions of the notebooks (nbgrader): assignments/release/<notebook>/<notebook>.ipynb
assignments: setup
	$(BIN)/python tools/assignments.py release

# Grade assignments/submitted/<student>/<notebook>/<notebook>.ipynb; scores in assignments/grades.csv
autograde: setup
	TFS_PROFILE=$${TFS_PROFILE:-ci} $(BIN)/python tools/assignments.py autograde
