# gatewayd — two commands do all set-up on a fresh Debian / Raspberry Pi OS machine:
#   make demo   the whole path on embedded defaults: emulated wearables -> gateway -> MQTT alerts
#   make test   lint, type-check and run the test suite
# Each installs what it needs: Debian packages (when missing and running as root), a virtualenv
# in .venv, and the Python packages from pyproject.toml.

PYTHON    ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
STAMP     := $(VENV)/.installed
# No C build of a Python package: sd_notify and journald's protocol are plain Python
# (gatewayd/systemd.py); gcc builds the firmware stub. systemd itself is not listed: on a machine
# without it, installing it would pull a matching libsystemd0 and upgrade it (tests that need
# systemd-analyze skip instead).
DEB_PKGS  := gcc make python3-venv dbus mosquitto mosquitto-clients
# demo: amqtt, the in-process broker `gatewayd demo` falls back to when no mosquitto is at hand.
# bench: matplotlib, for the plots `gatewayd bench` draws (its smoke tests run in make test).
EXTRAS    ?= dev,demo,bench
# What `make demo` runs: the scripted one-minute scenario, unattended, ending in a JSON summary
# (exit 0 when every alert due arrived and no window was lost). DEMO_ARGS= gives the live view.
DEMO_ARGS ?= --headless --duration 60
PYTEST_ARGS ?=
# make test runs the suite in TEST_WORKERS processes (pytest-xdist; 0 runs it in one): most of
# its time is real time spent waiting (emulated links, private brokers, the demo's scripted
# minute), not CPU. --dist loadfile keeps each test file, and its module fixtures, in one process.
TEST_WORKERS ?= 3
# WITH_TRAIN=1 also installs the optional training extra (PyTorch, ONNX export) so the model
# tests run instead of skipping. CI sets it; torch is pinned because an unpinned torch from PyPI
# drags in gigabytes of CUDA packages on x86 (use a CPU wheel index for other versions).
WITH_TRAIN ?= 0
TORCH_SPEC ?= torch==2.13.0
TRAIN_STAMP := $(VENV)/.installed-train

.PHONY: all demo test lint typecheck bench deps venv firmware deb clean distclean

all: test

# Debian packages: installed only when one is missing, and only when we are root (otherwise we
# print the apt-get line for the user). dpkg-query keeps this a no-op on a prepared machine.
deps:
	@missing=""; \
	if command -v dpkg-query >/dev/null 2>&1; then \
	  for p in $(DEB_PKGS); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	  done; \
	fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages:$$missing"; \
	    echo "run: sudo apt-get install -y$$missing   (continuing; some tests will skip)"; \
	  fi; \
	fi

$(STAMP): pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[$(EXTRAS)]"
	@touch $@

$(TRAIN_STAMP): $(STAMP)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[$(EXTRAS),train]"
	@touch $@

ifeq ($(WITH_TRAIN),1)
venv: deps $(STAMP) $(TRAIN_STAMP)
else
venv: deps $(STAMP)
endif

firmware: deps
	$(MAKE) -C firmware_stub

lint: venv
	$(BIN)/ruff check gatewayd tests training
	$(BIN)/ruff format --check gatewayd tests training

typecheck: venv
	$(BIN)/mypy

test: venv lint typecheck
	$(BIN)/pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Reduced runs of every benchmark (a quarter of an hour on 2 cores), results in bench-results/;
# docs/benchmarks.md gives the full commands and the figures they gave. The scale sweep's
# wearables replay the real recordings in BENCH_DATA when it exists (so the default offload
# policy offloads what it would on real wrists), else synthetic sessions; scale.md says which.
BENCH_OUT ?= bench-results
BENCH_DATA ?= ../shared/data/bami
bench: venv
	@mkdir -p $(BENCH_OUT)
	$(BIN)/gatewayd bench models --runs 100 > $(BENCH_OUT)/models.txt && cat $(BENCH_OUT)/models.txt
	$(BIN)/gatewayd bench pipeline --windows 2000 --devices 16 > $(BENCH_OUT)/pipeline.txt \
	  && cat $(BENCH_OUT)/pipeline.txt
	$(BIN)/gatewayd bench scale --quick --out $(BENCH_OUT)/scale \
	  $(if $(wildcard $(BENCH_DATA)),--dataset $(BENCH_DATA))
	$(BIN)/gatewayd bench soak --minutes 4 --fault-interval-s 40 --out $(BENCH_OUT)/soak
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

demo: venv
	$(BIN)/gatewayd demo $(DEMO_ARGS)

# The Debian package (docs/install.md): build/deb/gatewayd_<version>_<arch>.deb. ARCH=arm64 builds
# for a Raspberry Pi from any machine (binary wheels for the target); default: this machine's.
ARCH ?=
deb: venv
	ARCH="$(ARCH)" PIP="$(BIN)/python -m pip" packaging/build-deb.sh

clean:
	$(MAKE) -C firmware_stub clean
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info

distclean: clean
	rm -rf $(VENV)
