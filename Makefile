# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# torch is pinned here only (pyproject asks for torch>=2.4): 2.13.0 is the CPU build on this
# machine's disk; pip must install it before anything that depends on torch.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test install browser clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# bpnet-lite is the reference model that tests and benchmarks compare against; --no-deps
	# skips its data-processing dependency (macs3, a slow source build) that its BPNet does not use.
	$(BIN)/python -m pip install -q --no-deps 'bpnet-lite>=0.8'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium renders the HTML report in its test (Debian package).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the report rendering test will fail"; }

demo: $(STAMP)
	$(BIN)/seq2reads demo

test: $(STAMP) browser
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
