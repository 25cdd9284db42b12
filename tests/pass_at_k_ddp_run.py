"""One validation with ``val_samples=4`` under DDP (gloo, CPU), for tests/test_pass_at_k.py (a script, because
Lightning's DDP launcher starts the other ranks by running the same command again).

    python tests/pass_at_k_ddp_run.py MODEL_DIR DATA_DIR DEVICES

Each rank writes the metrics it logged to ``DATA_DIR/metrics_<rank>.json``.
"""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from lightning.pytorch import Trainer

from lit_rl import RLOO, PromptData, RewardFunction, Sampling, Score


class FirstCCorrect(RewardFunction):
    """The first ``c`` samples of a prompt are correct (``c`` from its row): per-prompt counts fixed by the data,
    whatever was sampled and whichever rank samples it."""

    def score(self, prompts, completions, columns, groups):
        seen: dict[int, int] = {}
        out = []
        for group, c in zip(groups, columns["c"], strict=True):
            index = seen[group] = seen.get(group, -1) + 1              # the sample's index within its prompt
            out.append(Score(float(index < c), correct=index < c))
        return out


def main(model: str, data_dir: str, devices: int) -> None:
    torch.manual_seed(0)
    module = RLOO(model=model, reward=FirstCCorrect(), group_size=2, val_samples=4,
                  val_sampling=Sampling(temperature=1.0, max_new_tokens=4))
    data = PromptData(os.path.join(data_dir, "val.jsonl"), val_path=os.path.join(data_dir, "val.jsonl"),
                      val_batch_size=2)
    trainer = Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      default_root_dir=data_dir)
    trainer.validate(module, datamodule=data)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    with open(os.path.join(data_dir, f"metrics_{trainer.global_rank}.json"), "w") as f:
        json.dump(metrics, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
