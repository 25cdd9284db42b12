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

Multi-node is tried the same way: 2 "nodes" x 1 process on 127.0.0.1, each process started here with the
environment a cluster launcher sets (:func:`launch_nodes`), since Lightning launches the processes of its own node
only. The same tolerances hold: the ranks add the same terms as on one node.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from transformers import AutoModelForSequenceClassification

from lit_rl.cli import RANK_VARIABLES, launched_as_global_zero
from lit_rl.policy import Policy, resolve

from conftest import ROOT

SCRIPT = Path(__file__).with_name("distributed_run.py")
LOSS_ATOL = 2 * 127 * 2**-24 * 2.0                                    # see the docstring


def run(kind: str, devices: int, batch_size: int, out_dir: Path, algorithm: str = "rloo", num_nodes: int = 1) -> dict:
    out = out_dir / f"{kind}.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SCRIPT.parents[1])}
    command = [sys.executable, str(SCRIPT), kind, str(devices), str(batch_size), str(out), algorithm]
    if num_nodes == 1:
        result = subprocess.run(command, cwd=out_dir, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-4000:]
    else:
        launch_nodes([*command, "--num-nodes", str(num_nodes)], num_nodes, out_dir, env)
    return torch.load(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_nodes(command: list[str], num_nodes: int, cwd: Path, env: dict[str, str],
                 timeout: float = 600) -> list[str]:
    """Run ``command`` once per "node", all on 127.0.0.1, each process with the environment a cluster launcher
    sets for Lightning's general-purpose ``LightningEnvironment``: ``MASTER_ADDR`` and ``MASTER_PORT`` (node 0's
    rendezvous), ``NODE_RANK``, and ``LOCAL_RANK`` (which tells Lightning that the processes are started outside
    it, so it spawns none). Lightning computes the global rank as ``NODE_RANK x devices + LOCAL_RANK`` and the
    world size as ``num_nodes x devices``; ``WORLD_SIZE`` (the total number of processes, as Lightning's own
    launcher sets it) is not read by it and is set for completeness. Returns each node's stdout + stderr; a node
    that fails ends the others (they would wait for it at the next collective)."""
    port, logs, procs = free_port(), [], []
    for node in range(num_nodes):
        log = open(cwd / f"node{node}.log", "w+")
        logs.append(log)
        procs.append(subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env={
            **env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node),
            "WORLD_SIZE": str(num_nodes), "LOCAL_RANK": "0"}))
    deadline, failed_at = time.monotonic() + timeout, None
    try:
        while any(p.poll() is None for p in procs):
            if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
                failed_at = time.monotonic()
            if time.monotonic() > deadline or (failed_at is not None and time.monotonic() > failed_at + 20):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    for node, (p, output) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"node {node} exited with {p.returncode}:\n{output[-4000:]}"
    return outputs


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    return run("single", 1, 4, tmp_path_factory.mktemp("single"))


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_two_processes_match_one_process_with_the_same_global_batch(single, tmp_path, kind):
    check_matches_single(run(kind, 2, 2, tmp_path), single, kind, tmp_path)


@pytest.mark.parametrize("kind", ["ddp", "fsdp2"])
def test_two_nodes_match_one_process_with_the_same_global_batch(single, tmp_path, kind):
    """``num_nodes=2, devices=1``: two processes that Lightning did not launch, joined only through the launcher's
    environment, train like one process (and like 2 processes on one node)."""
    check_matches_single(run(kind, 1, 2, tmp_path, num_nodes=2), single, kind, tmp_path)


def check_matches_single(parallel: dict, single: dict, kind: str, out_dir: Path) -> None:
    """2 ranks x 2 prompts against 1 x 4: the same losses, global gradient norms and weights, and rank 0's export
    holds the gathered weights. Under DDP each of the 3 optimizer steps all-reduces each gradient bucket once
    (DDP rebuilds its buckets after the first), though each rank runs 2 micro-batches a step (4 rows,
    ``micro_batch_size`` 2)."""
    assert parallel["world_size"] == 2 and single["world_size"] == 1
    assert parallel["sharded"] == (kind == "fsdp2")                    # FSDP2 really sharded the parameters
    if kind == "ddp":                                   # 2 micro-batches a step, each bucket all-reduced once
        reduced = parallel["reduced"]                                   # (batch, bucket index) per all-reduce
        assert len(reduced) == len(set(reduced)) and {batch for batch, _ in reduced} == {0, 1, 2}, reduced
    assert len(parallel["losses"]) == len(single["losses"]) == 3
    assert_close(torch.tensor(parallel["losses"]), torch.tensor(single["losses"]), rtol=0, atol=LOSS_ATOL)
    assert_close(torch.tensor(parallel["grad_norms"]), torch.tensor(single["grad_norms"]), rtol=1e-4, atol=0)  # global norm
    assert set(parallel["weights"]) == set(single["weights"])
    for name, value in single["weights"].items():
        assert_close(parallel["weights"][name], value, rtol=0, atol=1e-5, msg=name)
    start = Policy.load("builtin:countdown-sft").model.state_dict()
    assert max((single["weights"][k] - start[k]).abs().max() for k in start) > 1e-3   # training moved the weights
    exported = Policy.load(str(out_dir / "hf_model")).model.state_dict()             # rank 0's export, gathered
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


def test_lit_rl_fit_on_two_nodes_writes_one_run_directory(tmp_path, tiny_model_dir):
    """``lit-rl fit --trainer.num_nodes 2 --trainer.devices 1`` with the shipped DDP fragment, one process per
    "node" sharing a filesystem (as nodes share one on a cluster): the nodes join one run of world size 2, and only
    global rank 0 writes: one run directory (config, metrics, checkpoint, ``hf_model``, summary), one summary line.
    Every node's first process has ``LOCAL_RANK=0``, the rank Lightning reads before it sets up the strategy."""
    command = [sys.executable, "-m", "lit_rl.cli", "fit", "--config", str(ROOT / "cli_configs" / "rloo.yaml"),
               "--config", str(ROOT / "cli_configs" / "strategies" / "ddp.yaml"), "--trainer.num_nodes", "2",
               "--trainer.devices", "1", "--trainer.accelerator", "cpu", "--trainer.max_steps", "2",
               "--model.init_args.model", tiny_model_dir, "--trainer.default_root_dir", str(tmp_path / "runs"),
               "--model.init_args.sampling.max_new_tokens", "8", "--model.init_args.val_sampling.max_new_tokens", "8",
               "--data.init_args.batch_size", "2", "--data.init_args.val_size", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    node0, node1 = launch_nodes(command, 2, tmp_path, env)
    (run_dir,) = (tmp_path / "runs" / "rloo").iterdir()
    assert (run_dir / "config.yaml").is_file() and list((run_dir / "checkpoints").glob("*.ckpt"))
    assert "rollout/reward_mean" in (run_dir / "metrics.csv").read_text().splitlines()[0]
    assert Policy.load(str(run_dir / "hf_model")).model.num_parameters() > 0
    summary = (run_dir / "summary.txt").read_text().strip()
    assert summary.startswith("rloo: ") and "2 steps" in summary
    assert summary in node0 and summary not in node1
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in node1, node1[-3000:]


def test_erpd_on_two_nodes_trains_and_writes_its_history(tmp_path, tiny_model_dir):
    """ERPD under DDP on 2 "nodes" x 1 process: it used to hang at its first step, where rank 0 alone read
    ``trainer.log_dir`` (a broadcast) a second time to write ``erpd_history.jsonl``. Now both ranks train the
    teacher stage's first steps and rank 0 writes the history (the base policy's record first), the metrics
    and the checkpoint."""
    command = [sys.executable, "-m", "lit_rl.cli", "fit", "--config", str(ROOT / "cli_configs" / "erpd_mse.yaml"),
               "--config", str(ROOT / "cli_configs" / "strategies" / "ddp.yaml"), "--trainer.num_nodes", "2",
               "--trainer.devices", "1", "--trainer.accelerator", "cpu", "--trainer.max_steps", "2",
               "--model.init_args.model", tiny_model_dir, "--trainer.default_root_dir", str(tmp_path / "runs"),
               "--model.init_args.sampling.max_new_tokens", "8", "--model.init_args.val_sampling.max_new_tokens", "8",
               "--model.init_args.eval_size", "4", "--data.init_args.batch_size", "16", "--data.init_args.val_size", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    launch_nodes(command, 2, tmp_path, env, timeout=300)
    (run_dir,) = (tmp_path / "runs" / "erpd").iterdir()
    history = [json.loads(line) for line in (run_dir / "erpd_history.jsonl").read_text().splitlines()]
    assert history[0]["stage"] == "base", history
    rows = [line for line in (run_dir / "metrics.csv").read_text().splitlines()[1:] if line]
    assert "erpd/stage" in (run_dir / "metrics.csv").read_text().splitlines()[0] and len(rows) >= 2
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("variables, zero", [
    ({}, True),                                                         # one process
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, False),                     # Lightning's launcher, second device
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),                     # a general-purpose cluster, second node
    ({"LOCAL_RANK": "0", "NODE_RANK": "0", "WORLD_SIZE": "2"}, True),
    ({"SLURM_PROCID": "8", "SLURM_LOCALID": "0", "SLURM_NODEID": "1"}, False),   # srun, second node
    ({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}, True),
    ({"RANK": "4", "LOCAL_RANK": "0", "GROUP_RANK": "1"}, False),       # torchrun, second node
])
def test_the_run_directory_is_made_by_global_rank_zero_alone(monkeypatch, variables, zero):
    """Before Lightning sets up the strategy, ``rank_zero_only.rank`` reads ``RANK``, ``LOCAL_RANK`` or
    ``SLURM_PROCID``: the first process of node 1 under a launcher that sets ``NODE_RANK`` says 0 there."""
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert launched_as_global_zero() == zero
