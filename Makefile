PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_run

.PHONY: setup test demo bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m project.demo --workdir $(DEMO_DIR)

bench: $(STAMP)
	$(PY) bench/train_throughput.py
	$(PY) bench/infer_throughput.py
	$(PY) bench/decode.py
	$(PY) bench/scratch_learning.py

lint: $(STAMP)
	$(VENV)/bin/ruff check project tests bench run.py train_cls train_fea

clean:
	rm -rf $(VENV) $(DEMO_DIR)
