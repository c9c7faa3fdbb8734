# The two commands of the README: `make run` (the pipeline) and `make test` (the test suite).
# Both create .venv and install pinned dependencies first when needed.
SHELL := /bin/bash
VENV := .venv
ENV := source scripts/env.sh && export PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

.PHONY: run paper test setup clean-runs prefect-ui mlflow-ui serve
run: $(VENV)/.installed
	$(ENV) && scripts/repro.sh

# The paper's whole grid (Tables 4-5, Figs. 3 and 6, 3 seeds of Tables 1-2) as DVC experiments, then the report:
# `make paper PRESET=smoke WORKERS=2`. Only missing experiments run (docs/grid.md).
paper: $(VENV)/.installed
	$(ENV) && scripts/paper.sh $(if $(PRESET),--preset $(PRESET)) $(if $(WORKERS),--workers $(WORKERS))

# The Prefect UI and API on http://127.0.0.1:4200 (runs of `make run` show up there), and the MLflow UI on :5000.
prefect-ui: $(VENV)/.installed
	$(ENV) && prefect server start --host 127.0.0.1 --port 4200

mlflow-ui: $(VENV)/.installed
	$(ENV) && mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlflow.db --host 127.0.0.1 --port 5000 --workers 1

# Scheduled pipeline runs (needs `make prefect-ui` running): `dvc repro` stage by stage, daily at 03:00 UTC;
# `make serve GRID=cpu GRID_CRON="0 4 * * 6"` also serves the paper's grid on its work pool (docs/grid-workers.md).
serve: $(VENV)/.installed
	$(ENV) && PREFECT_API_URL=http://127.0.0.1:4200/api python -m flows.serve --cron "$(or $(CRON),0 3 * * *)" \
	  $(if $(GRID),--grid $(GRID) $(if $(GRID_CRON),--grid-cron "$(GRID_CRON)"))

# scripts/test_deps.sh installs Chromium (browser tests) and PostgreSQL (the profile store's tests) where it can
# (root with apt-get: CI).
# pytest runs TEST_WORKERS processes (pytest-xdist), each test file in one, the end-to-end files first (conftest.py),
# with one math thread each: on 2 cores the suite took 721 s against 1162 s in one process (two threads per worker
# oversubscribe the cores and spin).
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	scripts/test_deps.sh
	$(ENV) && ruff check p2p flows tests bench && \
	  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt scripts/bootstrap.sh
	scripts/bootstrap.sh

# Remove local run stores (MLflow database and artifacts, Prefect home); data and DVC cache stay.
clean-runs:
	rm -rf mlflow.db mlartifacts .prefect
