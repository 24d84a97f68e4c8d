# `make demo` and `make test` install what they need into .venv first (once; again only when
# pyproject.toml changes), then run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install data demo test lint clean

install: $(STAMP)

# The bytecode is written once here, on all cores (pip compiles one file at a time): where
# PYTHONDONTWRITEBYTECODE is set, every process would otherwise compile each module it imports
# again, and the tests start dozens of processes (the suite took 445 s so, 367 s with it written,
# from a fresh clone). The two files skipped do not compile on Python 3.11 and are never imported.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile -e '.[deploy,mobile,serve,dev]'
	$(PY) -m compileall -qq -j 0 -x 'litert_torch/generative/examples|torch/testing/_internal/py312' \
		"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
	touch $(STAMP)

# Fashion-MNIST comes from the Debian package (no download at run time).
data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist

# The page's browser test drives Debian's Chromium through Playwright (no browser download).
$(CHROMIUM):
	$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium

demo: install data
	PY=$(PY) scripts/demo.sh

# worksteal: a worker that runs out of tests takes queued ones from the other.
test: install lint $(CHROMIUM)
	$(PY) -m pytest -q -n 2 --dist worksteal

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) runs .pytest_cache
