# Two commands do all the setup: `make demo` runs the pipeline, `make test` the tests.
# Both create .venv and install the project on first use (pip, so the local torch wheel is used).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test serve bench clean

# The JupyterLab extension's sources too: pip's build hook (hatch_build.py) rebuilds it when they change.
LABEXT_SOURCES := hatch_build.py $(wildcard jupyterlab-ext/package.json jupyterlab-ext/package-lock.json \
	jupyterlab-ext/tsconfig.json jupyterlab-ext/src/* jupyterlab-ext/style/*)

$(STAMP): pyproject.toml requirements.lock examples/lab-plugin-example/pyproject.toml $(LABEXT_SOURCES)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' -c requirements.lock
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e examples/lab-plugin-example -c requirements.lock
	$(VENV)/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lab run

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --durations=25

serve: $(STAMP)
	$(VENV)/bin/lab serve --host 127.0.0.1 --port 8000

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf data runs registry.db registry.db-wal registry.db-shm
