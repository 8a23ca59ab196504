# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
DATA ?= ../shared/data/her2st
DEMO_OUT ?= demo_out

.PHONY: install demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch + torchvision first (pinned, see DEVELOPERS.md): timm needs torchvision at import.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[dev]'
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: the report screenshot test will be skipped"
	touch $(STAMP)

install: $(STAMP)

# The main job on the default data: fit on C2-C5 with the shipped encoder, predict C6 from its H&E alone, then
# write the predicted AnnData, observed-vs-predicted maps and metrics under $(DEMO_OUT)/.
demo: install
	$(VENV)/bin/spafoundation info $(DATA)
	$(VENV)/bin/spafoundation fit-expression $(DATA) --sections C2,C3,C4,C5 --out $(DEMO_OUT)/model \
		--cache-dir $(DEMO_OUT)/cache
	$(VENV)/bin/spafoundation predict-expression $(DEMO_OUT)/model $(DATA) --sections C6 \
		--out $(DEMO_OUT)/C6_predicted.h5ad --cache-dir $(DEMO_OUT)/cache

test: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/ruff check src tests bench
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

# Benchmarks print their ratios and rewrite their sections of BENCHMARKS.md.
bench: install
	$(PY) bench/embed_throughput.py
	$(PY) bench/expression.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
