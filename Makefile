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
	$(PIP) install -q -e '.[dev,spatialdata]'
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: the report screenshot test will be skipped"
	touch $(STAMP)

install: $(STAMP)

# The main job on the default data: one `spafoundation run` fits expression on C2-C5 with the shipped encoder,
# predicts C6 from its H&E alone, maps tumour and spatial domains, and writes $(DEMO_OUT)/report.html.
# The section names and region annotations are HER2ST's: other data (make demo DATA=...) runs with run's defaults.
HER2ST_ARGS := --sections C2,C3,C4,C5,C6 --set tumor.label_column=cluster_annotation --set tumor.route=both \
	--set clusters.reference_column=cluster_annotation
DEMO_ARGS ?= $(if $(wildcard $(DATA)/ST-cluster/lbl/C6-cluster-annotation.tsv.gz),$(HER2ST_ARGS),)
demo: install
	$(VENV)/bin/spafoundation run --data $(DATA) --out $(DEMO_OUT) $(DEMO_ARGS)

# One pytest-xdist worker per core (up to 4), each on one thread: workers that each start a thread per core fight
# over the cores (on 2 cores: 14.4 min with the default threads, 9.7 min with one; README).
test: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/ruff check src tests bench
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 \
		$(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal tests

# ruff's linter only: the code keeps hand-wrapped lines up to 120 characters, which the formatter would rewrap.
lint: install
	$(VENV)/bin/ruff check src tests bench

# Benchmarks print their ratios and rewrite their sections of BENCHMARKS.md.
bench: install
	$(PIP) install -q -e '.[onnx]'
	$(PY) bench/read_speed.py
	$(PY) bench/embed_throughput.py
	$(PY) bench/cpu_fast_path.py
	$(PY) bench/wsi_scale.py
	$(PY) bench/gpu_throughput.py
	$(PY) bench/expression.py
	$(PY) bench/reliability.py
	$(PY) bench/expression_headroom.py
	$(PY) bench/stain_stability.py
	$(PY) bench/tumor_clustering.py
	$(PY) bench/descriptor_encoder.py
	$(PY) bench/superres.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
