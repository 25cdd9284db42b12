"""An asynchronous RLOO run (``max_staleness: 1``, ``CopyEngine``) under DDP on 2 CPU processes, for
tests/test_async_rollouts.py (a script, because Lightning's DDP launcher starts the other rank by running the same
command again).

    python tests/async_ddp_run.py OUT_DIR

Each rank writes ``rank<R>.json``: per step, the prompts it trained, the rollout's policy version and
``rollout/staleness``, and its engine's syncs.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from lightning.pytorch import Trainer

from lit_rl import RLOO, CopyEngine, CountdownData, ImportanceSampling, RolloutCallback, Sampling

from distributed_run import PlusAndLength


class Record(RolloutCallback):
    def __init__(self) -> None:
        self.steps: list[dict] = []

    def on_rollout_end(self, trainer, module, rollout) -> None:
        self.steps.append({"prompts": rollout.prompts[::rollout.group_size], "version": rollout.version})

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.steps[-1]["staleness"] = float(trainer.callback_metrics["rollout/staleness"])


def main(out_dir: str) -> None:
    torch.manual_seed(0)
    module = RLOO(model="builtin:countdown-sft", group_size=2, engine=CopyEngine(), max_staleness=1,
                  importance_sampling=ImportanceSampling("mask"), sampling=Sampling(temperature=1.0, max_new_tokens=16),
                  reward=PlusAndLength(), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    record = Record()
    trainer = Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=3, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      limit_val_batches=0, callbacks=[record], default_root_dir=out_dir)
    trainer.fit(module, datamodule=CountdownData(batch_size=2, train_size=64, val_size=4))
    with open(os.path.join(out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
        json.dump({"steps": record.steps, "syncs": module.engine.version}, f)


if __name__ == "__main__":
    main(sys.argv[1])
