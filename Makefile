# The two commands a new user runs: `make demo` and `make test`. Both create .venv and install.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Torch trap: this machine's pip prefers a local CPU-only torch wheel, and PyPI's torchvision
# (CUDA build) fails to import against it. The CUDA pair from PyPI runs fine on CPU, so install
# it first with --isolated (ignores local wheel folders), then the project on top.
TORCH_SPEC ?= torch==2.13.0 torchvision==0.28.0
PYTEST_ARGS ?=

.PHONY: install demo test test-fast browser clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip --isolated install --disable-pip-version-check -q $(TORCH_SPEC)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	$(PY) -c "import torch, torchvision, open_clip, ray, img2dataset, pipeline" 
	touch $(STAMP)

demo: install
	$(VENV)/bin/mmcurate demo

# Headless Chromium renders the HTML report in its test. Installed when missing and apt-get is
# usable (root, Debian/Ubuntu); otherwise that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null) ; } || \
	  echo "note: chromium not installed; the report screenshot test will be skipped"

test: install browser
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -m "not slow and not s3" $(PYTEST_ARGS)

clean:
	rm -rf runs/demo .pytest_cache
