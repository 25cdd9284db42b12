"""Lightning strategies on CPU for real: DDP (gloo, 2 processes) and FSDP2 (``ModelParallelStrategy`` with
``fully_shard``, 2 processes) each give the loss trajectory and weights of 1 process with the same global batch
(2 ranks x 2 prompts vs 1 x 4; ``token_mean`` aggregation, whose normaliser needs the all-reduced token count).

Tolerances come from float32 analysis, not from what passed once: the ranks sum the same terms in another order
(partial sums, then an all-reduce), and another CPU sums them with other vector widths. A loss is a mean of at
most n = 4 prompts x 2 samples x 16 tokens = 128 per-token terms, each at most 2 in size (RLOO's |advantage|
<= the reward's range, 1 + 16/30; PPO adds 0.5 (value - return)^2 on the same scale); two float32 sums of n
terms in different orders differ by at most 2 (n - 1) u max|term| (u = 2^-24), 3.0e-5 (seen: up to 1.2e-6;
a per-rank normaliser is off by about 1e-4). Weights within 1e-5 after 3 AdamW steps at lr 1e-3: AdamW divides
by sqrt(v) + eps, so a difference d in a gradient entry moves that entry's update by up to lr d / eps, however
small the entry. With torch's eps of 1e-8 a rounding-level difference in a near-zero entry moved a weight by
1.3e-4 under ATEN_CPU_CAPABILITY=default (as much as a per-rank normaliser does), so the runs use eps 1e-6:
gradient entries of size <= 1e-2 differ by d <~ 1e-9, at most 1e-6 a step (seen: up to 3.8e-6 after 3 steps
under default, 4e-7 under avx512).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from transformers import AutoModelForSequenceClassification

from lit_rl.policy import Policy, resolve

SCRIPT = Path(__file__).with_name("distributed_run.py")
LOSS_ATOL = 2 * 127 * 2**-24 * 2.0                                    # see the docstring


def run(kind: str, devices: int, batch_size: int, out_dir: Path, algorithm: str = "rloo") -> dict:
    out = out_dir / f"{kind}.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SCRIPT.parents[1])}
    result = subprocess.run([sys.executable, str(SCRIPT), kind, str(devices), str(batch_size), str(out), algorithm],
                            cwd=out_dir, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out)


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    return run("single", 1, 4, tmp_path_factory.mktemp("single"))


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_two_processes_match_one_process_with_the_same_global_batch(single, tmp_path, kind):
    parallel = run(kind, 2, 2, tmp_path)
    assert parallel["world_size"] == 2 and single["world_size"] == 1
    assert parallel["sharded"] == (kind == "fsdp2")                    # FSDP2 really sharded the parameters
    assert len(parallel["losses"]) == len(single["losses"]) == 3
    assert_close(torch.tensor(parallel["losses"]), torch.tensor(single["losses"]), rtol=0, atol=LOSS_ATOL)
    assert_close(torch.tensor(parallel["grad_norms"]), torch.tensor(single["grad_norms"]), rtol=1e-4, atol=0)  # global norm
    assert set(parallel["weights"]) == set(single["weights"])
    for name, value in single["weights"].items():
        assert_close(parallel["weights"][name], value, rtol=0, atol=1e-5, msg=name)
    start = Policy.load("builtin:countdown-sft").model.state_dict()
    assert max((single["weights"][k] - start[k]).abs().max() for k in start) > 1e-3   # training moved the weights
    exported = Policy.load(str(tmp_path / "hf_model")).model.state_dict()            # rank 0's export, gathered
    for name, value in parallel["weights"].items():
        assert torch.equal(exported[name], value), name


@pytest.mark.parametrize("algorithm", ["ppo", "ppo_critic"], ids=["value_head", "separate_critic"])
def test_ppo_under_fsdp2_shards_and_reduces_its_critic_too(tmp_path, algorithm):
    """PPO's value head sits beside the policy, sharded with it (one clip covers both); a separate critic (here
    from the reward model) has its blocks sharded like the policy's. Either way its gradients are reduced over the
    ranks, so 2 processes keep 1 process's losses and critic (advantage whitening off: it reads each rank's own
    batch). The separate critic's export, gathered on every rank, is rank 0's ``critic/``."""
    (tmp_path / "single").mkdir()
    single = run("single", 1, 4, tmp_path / "single", algorithm)
    parallel = run("fsdp2", 2, 2, tmp_path, algorithm)
    assert_close(torch.tensor(parallel["losses"]), torch.tensor(single["losses"]), rtol=0, atol=LOSS_ATOL)
    prefix = "value_head." if algorithm == "ppo" else "critic."
    critic = [k for k in single["weights"] if k.startswith(prefix)]
    start = {} if algorithm == "ppo" else {f"critic.{k}": v for k, v in AutoModelForSequenceClassification
                                           .from_pretrained(resolve("builtin:countdown-rm")).state_dict().items()}
    moved = max((single["weights"][k] - start.get(k, torch.zeros_like(single["weights"][k]))).abs().max()
                for k in critic)
    assert critic and moved > 1e-4                                      # the critic trained
    for name in critic:
        assert_close(parallel["weights"][name], single["weights"][name], rtol=0, atol=1e-5, msg=name)
    if algorithm == "ppo_critic":
        exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "critic").state_dict()
        for name, value in exported.items():
            assert torch.equal(value, parallel["weights"][f"critic.{name}"]), name
