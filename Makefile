# The two entry points README.md promises: `make run` and `make test`, both from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build on this project's machines; GPU users can point TORCH_SPEC at their own build (or preinstall torch).
TORCH_SPEC ?= torch==2.13.0
PROMPT ?= a red circle on a white background
# The web UI tests drive Debian's Chromium headless (Playwright uses it; no browser download).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup browser compiler run test lint

$(BIN)/sfumato: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	# spandrel (model upscalers, LaMa) without its torchvision requirement: PyPI's torchvision is a CUDA
	# build that breaks a CPU torch, and spandrel runs without it (sfumato/upscalers/spandrel_import.py)
	$(BIN)/python -m pip install -q --no-deps "spandrel>=0.4.2" "einops>=0.7"
	touch $(BIN)/sfumato

setup: $(BIN)/sfumato

run: setup
	$(BIN)/sfumato txt2img "$(PROMPT)"

browser:
	test -x $(CHROMIUM) || $(SUDO) apt-get install -y -q chromium || \
		($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

# torch.compile's CPU backend (inductor) builds its kernels with a C++ compiler (tests/test_compiled_unet.py).
compiler:
	command -v g++ >/dev/null || $(SUDO) apt-get install -y -q g++ || \
		($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q g++)

test: setup browser compiler
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
