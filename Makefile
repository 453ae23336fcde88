# One task runner for developers and CI.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Every Python folder ruff sees; packaging/emulate-arm64 is a Python script without the suffix.
PY_SOURCES := appliance tests bench plugins packaging scripts packaging/emulate-arm64

.PHONY: serve check test test-fast lint fmt typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/appliance serve $(ARGS)

# What CI runs (.ci/run): formatting, lint, types, then the whole suite.
check: lint typecheck test

# The whole suite: unit, component, e2e (real processes) and hostile tiers.
test: $(STAMP)
	$(BIN)/pytest $(ARGS)

# The quick loop: no real `appliance serve` processes (e2e) and nothing marked slow.
test-fast: $(STAMP)
	$(BIN)/pytest -m 'not e2e and not slow' $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/ruff check $(PY_SOURCES)

fmt: $(STAMP)
	$(BIN)/ruff format $(PY_SOURCES)
	$(BIN)/ruff check --fix $(PY_SOURCES)

# The package strictly; tests and bench checked too (tests with looser settings: pyproject.toml).
typecheck: $(STAMP)
	$(BIN)/mypy appliance
	$(BIN)/mypy tests bench

bench: $(STAMP)
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/query.py
	$(BIN)/python bench/mqtt.py
	$(BIN)/python bench/sync.py --repeat 3

# The frozen executable (PyInstaller), for this machine's architecture: dist/appliance and
# dist/appliance-onedir/. MODE=onefile|onedir|both (default both); see packaging/README.md.
# Built in its own venv (build/venv-ARCH) from packaging/requirements.lock, not from .venv.
# BASE=bullseye builds in a Debian bullseye root instead: dist/amd64-bullseye/, glibc 2.31 (see
# packaging/README.md); test-bullseye runs the frozen-binary tests against it inside that root.
HOST_ARCH := $(shell dpkg --print-architecture)
.PHONY: binary test-bullseye
binary:
ifeq ($(BASE),)
	PYTHON='$(PYTHON)' sh packaging/build.sh
else
	sh packaging/build-in-root $(BASE) $(HOST_ARCH)
endif

test-bullseye: $(STAMP)
	APPLIANCE_BINARY=dist/$(HOST_ARCH)-bullseye/appliance-onedir/appliance:dist/$(HOST_ARCH)-bullseye/appliance \
		APPLIANCE_BINARY_RUNNER="python3 packaging/debroot.py run build/roots/bullseye-$(HOST_ARCH) --bind '$(CURDIR)' --bind /tmp --cwd '$(CURDIR)' --" \
		$(BIN)/pytest tests/e2e/test_binary.py $(ARGS)

# The aarch64 build on an x86_64 Debian machine, in an emulated Debian root (no binfmt needed):
# dist/arm64/ (bookworm, glibc 2.36) or, with BASE=bullseye, dist/arm64-bullseye/ (glibc 2.31).
# test-arm64 runs the frozen-binary tests against it under the same emulation.
ARM64_DIST := dist/arm64$(if $(filter-out bookworm,$(or $(BASE),bookworm)),-$(BASE))
.PHONY: binary-arm64 test-arm64
binary-arm64:
	sh packaging/build-in-root $(or $(BASE),bookworm) arm64

test-arm64: $(STAMP)
	ARM64_ROOT=build/roots/$(or $(BASE),bookworm)-arm64 \
		APPLIANCE_BINARY=$(ARM64_DIST)/appliance-onedir/appliance:$(ARM64_DIST)/appliance \
		APPLIANCE_BINARY_RUNNER=packaging/emulate-arm64 \
		$(BIN)/pytest tests/e2e/test_binary.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
