# The two set-up commands (README): `make demo` and `make test`. Each creates .venv and installs
# the project on first use, so they work on a fresh machine that has only Python 3.11+.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/alexnet demo

# pytest exits 5 when it collected no tests: that is a failure here, not a pass. --durations lists
# the slowest tests, where the suite's time goes.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -ra --durations=30 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# Skips the slow tests (pyproject.toml's markers; CI runs everything with `make test`).
test-fast: $(STAMP)
	$(MAKE) test PYTEST_ARGS="-m 'not slow'"

clean:
	rm -rf $(VENV) alexnet-work alexnet-demo .pytest_cache
