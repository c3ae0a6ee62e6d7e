# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast install migrate bench clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(PY) manage.py migrate --noinput

# Web on http://127.0.0.1:8000 plus the generation worker and the training worker; Ctrl-C stops all
# within seconds (manage.py workers: a job in progress goes back to the queue and runs on the next start).
run: migrate
	@echo ""
	@echo "  imagesite is starting on http://127.0.0.1:8000  (Ctrl-C stops web and workers)"
	@echo ""
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/honcho start -f Procfile

# Two test processes (pytest-xdist), a file each at a time: the suite's torch work uses one thread,
# so a 2-core box runs it in about half the time. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test: install
	$(PY) -m pytest $(XDIST)

# The inner loop: everything but the slow lanes (real qcluster workers, the browser, PostgreSQL and
# Redis). `make test` stays the complete run CI does.
test-fast: install
	$(PY) -m pytest $(XDIST) -m "not worker and not browser and not scale_out"

bench: install
	$(PY) bench/worker_overhead.py

clean:
	rm -rf $(VENV) build
