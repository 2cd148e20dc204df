# The two set-up commands of the README. Each installs what it needs.
# torch: an installed torch (CPU or CUDA build) is kept; without one, torch 2.13.0 is installed
# explicitly so that pip never resolves a bare `torch` requirement to a multi-GB download.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0

.PHONY: install install-test test demo

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e .

install-test:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e ".[test]"

test: install-test
	$(PYTHON) -m pytest

demo:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "torch==$(TORCH_VERSION)"
	$(PYTHON) -m pip install -e ".[train]"
	$(PYTHON) -m rawks_triton.cli demo
