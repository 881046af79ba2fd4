# Two entry points: `make demo` (set up + run the embedded demo) and `make test` (set up, lint, tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORES ?= 2
IMPORT_ALL := import importlib, pathlib, snakemake.cli; from skimage.transform import resize; [importlib.import_module(f'workflow_scripts.{p.stem}') for p in sorted(pathlib.Path('workflow_scripts').glob('*.py'))]
DEMO_FIGURES := results/figures/shapes/tiny/qualitative.png results/figures/shapes+/tiny/qualitative.png

.PHONY: venv demo figures docs-figure test lint report clean

# --no-compile: pip does not byte-compile the 5 GB of torch (2 min -> under 1 min); the last line
# compiles just the modules the pipeline imports, by importing them once with bytecode writing on
# (PYTHONDONTWRITEBYTECODE, where a machine sets it, would leave every job compiling torch anew).
$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -r requirements.txt
	$(PY) -m pip install -q --no-compile --no-deps --no-build-isolation -e .
	env -u PYTHONDONTWRITEBYTECODE $(PY) -c "$(IMPORT_ALL)"
	touch $(STAMP)

venv: $(STAMP)

# The demo's Table 1 and its qualitative figures (drawn while the last models are evaluated); ends by
# printing the table and where the figures are.
demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) results/table1.csv $(DEMO_FIGURES)
	@echo; cat results/table1.md; echo
	@echo "Figures: $(DEMO_FIGURES) (all of them: make figures)"

# The lint runs first: a lint failure fails `make test` (and .ci/run). The 12 slowest tests are listed
# at the end, so a CI log shows where its time goes.
test: lint
	$(PY) -m pytest -q --durations=12 tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/snakefmt --check Snakefile rules

# Every table and figure of the config (rule all).
figures: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)

# The README's figure: the demo's qualitative grid of shapes val (figures.split), drawn by the pipeline.
docs-figure: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) results/figures/shapes/tiny/qualitative.png
	cp results/figures/shapes/tiny/qualitative.png docs/demo-qualitative.png

report: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES)
	$(VENV)/bin/snakemake --report results/report.html

clean:
	rm -rf results logs .snakemake
