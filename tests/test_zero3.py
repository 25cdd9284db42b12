"""DeepSpeed on the CPU side, with real DeepSpeed (CPU accelerator, gloo, one process; ``tests/zero3_run.py``):
the export (``hf_model/`` and, under LoRA, ``hf_model/adapter/``) and the vLLM weight sync gather ZeRO-3's
partitioned parameters; the policy's forward keeps materialised logits under ZeRO-3 (the chunked output layer's
backward would recompute with a frozen weight that ZeRO-3 has already released: LoRA's ``lora`` case here);
``train/grad_norm`` is DeepSpeed's engine's norm (``p.grad`` is ``None`` under ZeRO),
equal to the norm of the same loss without DeepSpeed. Lightning runs DeepSpeed on GPUs alone, so its strategy is
built here, never run: a ``max_grad_norm`` it would ignore is refused, ZeRO-3 counts as sharding, and ERPD refuses
DeepSpeed."""

import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace
from pathlib import Path

import pytest
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy

from lit_rl import ERPD, CountdownReward
from lit_rl.distributed import check_clipping, deepspeed_grad_norm, shards_parameters

SCRIPT = Path(__file__).with_name("zero3_run.py")


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_a_zero3_partitioned_policy_exports_its_weights_and_reports_its_gradient_norm(tiny_model_dir, tmp_path, mode):
    with socket.socket() as s:                                          # a free port for the process group
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    run = subprocess.run([sys.executable, str(SCRIPT), tiny_model_dir, mode, str(tmp_path)], capture_output=True,
                         text=True, timeout=600, env={**os.environ, "MASTER_PORT": port})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["partitioned"] and result["partitioned_after"]        # empty shards before and after the gather
    assert result["state_equal"]                                        # merged_state_dict: the full weights
    assert result["export_logp_err"] < 1e-5                             # hf_model/ is the policy
    if mode == "lora":
        assert result["adapter_logp_err"] < 1e-5                        # hf_model/adapter/ too
    assert result["p_grad_is_none"]                                     # what the module's own norm would see
    assert result["deepspeed_norm"] == pytest.approx(result["plain_norm"], rel=1e-5)


def test_the_gradient_norm_is_deepspeeds_only_under_deepspeed():
    assert deepspeed_grad_norm(DDPStrategy()) is None


def test_max_grad_norm_is_refused_under_deepspeed_which_would_ignore_it():
    with pytest.raises(ValueError, match="max_grad_norm: 1.0 would not clip under DeepSpeed.*gradient_clipping"):
        check_clipping(DeepSpeedStrategy(stage=2), 1.0)
    check_clipping(DeepSpeedStrategy(stage=2), None)
    check_clipping(DDPStrategy(), 1.0)


def test_which_strategies_shard_the_parameters():
    assert shards_parameters(DeepSpeedStrategy(stage=3)) and shards_parameters(ModelParallelStrategy())
    assert not shards_parameters(DeepSpeedStrategy(stage=2)) and not shards_parameters(DDPStrategy())


def test_erpd_refuses_deepspeed_whose_master_weights_would_undo_its_restores(tiny_model_dir):
    module = ERPD(model=tiny_model_dir, reward=CountdownReward(), max_grad_norm=None)
    module._trainer = SimpleNamespace(strategy=DeepSpeedStrategy(stage=2))   # Lightning runs DeepSpeed on GPUs only
    with pytest.raises(ValueError, match="ERPD does not run under DeepSpeed: it puts the policy's weights back"):
        module.setup("fit")
    module._trainer = SimpleNamespace(strategy=DDPStrategy())
    module.setup("fit")
