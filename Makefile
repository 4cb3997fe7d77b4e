# Two commands for a new machine: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deccm-installed
export DECCM_HOME ?= $(CURDIR)/.deccm
export NUMBA_CACHE_DIR ?= $(DECCM_HOME)/cache/numba

.PHONY: venv test chromium postgres music-packages stack-test demo airflow pipeline clean-venv

venv: $(STAMP)

# Idempotent: rebuilt only when the dependency pins change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq -c constraints.txt -e '.[test,scale]'
	# its declared pyaudio dependency only serves live playback and does not build here
	$(PY) -m pip install -qq --no-deps -c constraints.txt tinysoundfont==0.3.7
	touch $(STAMP)

test: venv chromium postgres music-packages
	$(PY) -m pytest -q -ra --durations=10

# PostgreSQL behind the MLflow server and Airflow's metadata DB, started and stopped by the test itself.
stack-test: venv postgres
	$(PY) -m pytest -q -ra tests/test_stack.py

# The demo's browser test drives Debian's chromium (playwright cannot download browsers here).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the browser test"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium; }

# The stack test starts its own cluster from Debian's postgresql binaries (no service is enabled).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { echo "installing Debian's postgresql for the stack test"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends postgresql; }

# The recorded catalog (DEMO_SOURCE=recorded) reads Debian's free game-soundtrack packages
# (deccm/data/corpus/recorded.py: PACKAGES; about 760 MB, the tests read them too).
MUSIC_PACKAGES := wesnoth-1.16-music ufoai-music warzone2100-music drascula-music nexuiz-music hyperrogue-music \
	singularity-music planetblupi-music-ogg asc-music
music-packages:
	@dpkg -s $(MUSIC_PACKAGES) >/dev/null 2>&1 || { echo "installing Debian's free soundtrack packages for the recorded catalog"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(MUSIC_PACKAGES); }

# First run: installs the soundtrack packages and builds the recorded corpus (real recordings, generated clips; about
# 5.5 min in all on 2 idle cores, docs/benchmarks.md), trains and registers a champion through the pipeline's stages (no
# Airflow needed) and the ridge baseline beside it (alias baseline, seconds), then serves. Later runs serve at once.
# DEMO_SOURCE=demo serves the rendered-score corpus instead (no packages needed).
# Safe to interrupt: the corpus build is atomic and cached, training resumes, registering is idempotent.
DEMO_PORT ?= 7860
DEMO_SOURCE ?= recorded
# One registry serves one catalog: DEMO_SOURCE=demo (the default until issue 22) keeps its state in $(DECCM_HOME) as
# before, any other source in $(DECCM_HOME)/<source>, so `make demo` and `make demo DEMO_SOURCE=demo` each find their own.
DEMO_HOME := $(if $(filter demo,$(DEMO_SOURCE)),$(DECCM_HOME),$(DECCM_HOME)/$(DEMO_SOURCE))
demo: export DECCM_HOME := $(DEMO_HOME)
demo: venv $(if $(filter recorded%,$(DEMO_SOURCE)),music-packages)
	@echo "make demo: a registered champion and a baseline beside it (built from the $(DEMO_SOURCE) corpus under $(DECCM_HOME) if there are none yet),"
	@echo "then the app on http://127.0.0.1:$(DEMO_PORT) (Ctrl-C stops it)"
	$(PY) demo/app.py --ensure $(DEMO_SOURCE) --host 127.0.0.1 --port $(DEMO_PORT)

# Airflow, local: one SQLite home under the state dir, this repo's dags/, the venv's bin on PATH
# (Airflow starts its own `airflow` subprocesses). tests/test_dag.py sets the same variables.
AIRFLOW_HOME  := $(abspath $(DECCM_HOME))/airflow
AIRFLOW_PORT  ?= 8080
PIPELINE_CONF ?= {}
AIRFLOW_ENV := AIRFLOW_HOME=$(AIRFLOW_HOME) AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__LOAD_EXAMPLES=False PATH=$(abspath $(VENV))/bin:$$PATH

# Scheduler, DAG processor, triggerer and the API server/UI on 127.0.0.1:$(AIRFLOW_PORT); Ctrl-C stops all.
# Workers call the API server's execution API, so its URL must follow the port.
airflow: venv
	@echo "Airflow UI: http://127.0.0.1:$(AIRFLOW_PORT)  user admin, password generated into"
	@echo "  $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated (also printed below: 'Password for user')"
	@echo "DAG deccm_retrain starts paused: unpause it in the UI for the weekly / data-drop schedule; manual triggers run once unpaused."
	$(AIRFLOW_ENV) AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$(AIRFLOW_PORT) \
	AIRFLOW__CORE__EXECUTION_API_SERVER_URL=http://127.0.0.1:$(AIRFLOW_PORT)/execution/ \
	AIRFLOW__CORE__PARALLELISM=$${AIRFLOW__CORE__PARALLELISM:-4} \
	$(VENV)/bin/airflow standalone

# One headless run of deccm_retrain (no scheduler or server), e.g. PIPELINE_CONF='{"source":"synth-tiny"}';
# fails when a task fails, then shows the registry and fails if no champion is registered.
pipeline: venv
	$(AIRFLOW_ENV) $(VENV)/bin/airflow db migrate > /dev/null
	$(AIRFLOW_ENV) $(VENV)/bin/airflow dags test deccm_retrain -c '$(PIPELINE_CONF)'
	$(PY) -m deccm.registry list
	@$(PY) -c 'from deccm import registry as r; v = r.champion_version(); \
		print(f"champion: {r.MODEL_NAME} version {v}") if v else exit("error: no champion is registered (see the gate task above)")'

clean-venv:
	rm -rf $(VENV)
