"""One short RLOO run under a Lightning strategy, for tests/test_distributed.py (a script, because Lightning's
DDP launcher starts the other ranks by running the same command again).

    python tests/distributed_run.py {single,ddp,fsdp2} DEVICES BATCH_SIZE OUT_FILE [rloo|ppo|ppo_critic] [--num-nodes N]

``--num-nodes N``: this process is one of N nodes' (``Trainer(num_nodes=N, devices=DEVICES)``). Lightning launches
no other node: start the script once per node with the environment a cluster launcher sets (``MASTER_ADDR``,
``MASTER_PORT``, ``NODE_RANK``, ``LOCAL_RANK``; tests/test_distributed.py does it on 127.0.0.1).

Rank 0 writes the per-step global ``train/loss`` and the final weights (gathered under FSDP2; PPO's value head
or separate critic too) to OUT_FILE, and under DDP the (batch, bucket index) of every gradient all-reduce.
Sampling is seeded per prompt (``PromptSeededEngine``), so a prompt draws the same completions whichever rank
and batch it lands in: 2 ranks x 2 prompts then see exactly the samples of 1 process x 4 prompts.
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from lit_rl import FSDP2, PPO, RLOO, CountdownData, CriticSettings, HFEngine, RewardFunction, Sampling, Score
from lit_rl.export import merged_state_dict
from lit_rl.rollout import Generation


class PromptSeededEngine(HFEngine):
    """HF sampling, one prompt at a time, the generator seeded from the prompt's tokens and the call count."""

    calls = 0

    def generate(self, prompt_ids, prompt_mask, sampling, n=1):
        self.calls += 1
        parts = []
        for ids, mask in zip(prompt_ids, prompt_mask):
            ids = ids[mask.bool()][None]
            torch.manual_seed(hash((tuple(ids[0].tolist()), self.calls)) % 2**31)
            parts.append(super().generate(ids, torch.ones_like(ids), sampling, n))
        width = max(p.completion_ids.shape[1] for p in parts)
        pad = self.tokenizer.pad_token_id
        return Generation(torch.cat([nn.functional.pad(p.completion_ids, (0, width - p.completion_ids.shape[1]), value=pad)
                                     for p in parts]),
                          torch.cat([nn.functional.pad(p.completion_mask, (0, width - p.completion_mask.shape[1]))
                                     for p in parts]))


REDUCED: list[tuple[int, int]] = []                                     # (batch, bucket) of each all-reduce here
BATCH = [0]


def counted_allreduce(state, bucket):
    """DDP's own all-reduce of a gradient bucket, each call recorded (the training batch, the bucket's index)."""
    REDUCED.append((BATCH[0], bucket.index()))
    return allreduce_hook(state, bucket)


class CountReductions(Callback):
    """Installs :func:`counted_allreduce` on the DDP model (Lightning's ``ddp_comm_hook`` is for CUDA only)."""

    def on_train_start(self, trainer, pl_module):
        if isinstance(trainer.strategy.model, DistributedDataParallel):
            trainer.strategy.model.register_comm_hook(None, counted_allreduce)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        BATCH[0] = batch_idx


class PlusAndLength(RewardFunction):
    """Varies between samples of the built-in model, and its completions end at different lengths."""

    def __call__(self, completion, meta):
        return Score(float("+" in completion) + len(completion) / 30)


class Losses(Callback):
    def __init__(self):
        self.losses, self.grad_norms = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(trainer.callback_metrics["train/loss"]))
        self.grad_norms.append(float(trainer.callback_metrics["train/grad_norm"]))


def main(kind: str, devices: int, batch_size: int, out: str, algorithm: str = "rloo", num_nodes: int = 1) -> None:
    torch.manual_seed(0)
    extra = {"whiten_advantages": False} if algorithm != "rloo" else {}  # whitening reads each rank's batch
    if algorithm == "ppo_critic":                                        # a separate critic from the reward model
        extra["critic"] = CriticSettings(model="builtin:countdown-rm", max_grad_norm=None)   # the lr the bound assumes
    module = {"rloo": RLOO, "ppo": PPO, "ppo_critic": PPO}[algorithm](
        **extra, model="builtin:countdown-sft", group_size=2, aggregation="token_mean", engine=PromptSeededEngine(),
        sampling=Sampling(temperature=1.0, max_new_tokens=16), reward=PlusAndLength(), max_grad_norm=None,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, eps=1e-6, weight_decay=0.0))   # eps: see test_distributed
    module.policy.logps_chunk_tokens = 8            # several output-layer chunks a micro-batch, summed in one gradient
    module.micro_batch_size = 2                     # and several micro-batches a step: the later ones add into .grad
    strategy = {"single": "auto", "ddp": "ddp",
                "fsdp2": FSDP2()}[kind]                                  # data-parallel over num_nodes x devices
    losses = Losses()
    trainer = Trainer(accelerator="cpu", devices=devices, num_nodes=num_nodes, strategy=strategy, max_steps=3,
                      logger=CSVLogger(os.path.dirname(os.path.abspath(out)), name="", version=""),  # export dir
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      limit_val_batches=0, callbacks=[losses, CountReductions()], default_root_dir=os.path.dirname(os.path.abspath(out)))
    trainer.fit(module, datamodule=CountdownData(batch_size=batch_size, train_size=64, val_size=4))
    weights = merged_state_dict(module.policy.model)                    # a collective under FSDP2: every rank
    if algorithm == "ppo":
        weights.update({f"value_head.{k}": v for k, v in merged_state_dict(module.value_head).items()})
    if algorithm == "ppo_critic":
        weights.update({f"critic.{k}": v for k, v in merged_state_dict(module.critic.model).items()})
    if trainer.is_global_zero:
        torch.save({"losses": losses.losses, "grad_norms": losses.grad_norms, "weights": weights, "world_size": trainer.world_size,
                    "reduced": REDUCED,
                    "sharded": hasattr(module.policy.model.lm_head.weight, "full_tensor")}, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["single", "ddp", "fsdp2"])
    parser.add_argument("devices", type=int)
    parser.add_argument("batch_size", type=int)
    parser.add_argument("out")
    parser.add_argument("algorithm", nargs="?", default="rloo", choices=["rloo", "ppo", "ppo_critic"])
    parser.add_argument("--num-nodes", type=int, default=1)
    main(**vars(parser.parse_args()))
