"""``CompletionLog``: the samples a run learns from, where a user can read them."""

import json
import math
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lit_rl.checkpointing import atomic_write
from lit_rl.callbacks.rollout_callback import RolloutCallback
from lit_rl.rollout import RolloutBatch


class CompletionLog(RolloutCallback):
    """Appends the first ``per_step`` samples of every rollout to ``<run dir>/completions.jsonl`` (one JSON
    object a line: ``step``, ``prompt``, ``completion``, ``reward``, ``correct``, ``components``, ``advantage``)
    and shows them as a TensorBoard text summary. A resumed run first drops the lines of the steps it will
    redo, so no line is duplicated. Without a logger there is no run directory and nothing is written.
    Shipped by ``RLModule.configure_callbacks``; ``per_step: 0`` turns it off."""

    def __init__(self, per_step: int = 8, filename: str = "completions.jsonl", tensorboard: bool = True) -> None:
        """
        Args:
            per_step: samples logged per rollout (whole groups first: rows are prompt-major).
            filename: the file's name inside the run directory.
            tensorboard: also add them to TensorBoard as a text summary (tag ``completions``).
        """
        if per_step < 0:
            raise ValueError(f"CompletionLog: per_step must be >= 0 (got {per_step})")
        self.per_step, self.filename, self.tensorboard = per_step, filename, tensorboard

    def path(self, trainer: Trainer) -> Path | None:
        return Path(trainer.log_dir, self.filename) if trainer.loggers and trainer.log_dir else None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = self.path(trainer)
        if not trainer.is_global_zero or path is None or not path.exists():
            return
        kept = [line for line in path.read_text().splitlines(keepends=True)
                if line.strip() and json.loads(line)["step"] < trainer.global_step]
        atomic_write(path, lambda f: f.write("".join(kept).encode()))  # never a half-rewritten log

    def on_rollout_end(self, trainer: Trainer, pl_module: LightningModule, rollout: RolloutBatch) -> None:
        path = self.path(trainer)
        if not trainer.is_global_zero or path is None or self.per_step == 0 or len(rollout) == 0:
            return
        rows = self.rows(pl_module, rollout.select(slice(0, self.per_step)), trainer.global_step)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
        for logger in trainer.loggers if self.tensorboard else []:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("completions", markdown(rows), trainer.global_step)

    @staticmethod
    def rows(pl_module: Any, rollout: RolloutBatch, step: int) -> list[dict[str, Any]]:
        stop = getattr(getattr(pl_module, "sampling", None), "stop", ())
        texts = pl_module.policy.decode(rollout.completion_ids, rollout.completion_mask, stop)
        advantages = rollout.advantages
        if advantages is not None and advantages.dim() == 2:                # per-token: the mean over the tokens
            mask = rollout.completion_mask
            advantages = (advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)

        def number(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 6)

        return [{"step": step,
                 "prompt": rollout.prompts[i] if rollout.prompts else None,
                 "completion": texts[i],
                 "reward": number(float(rollout.scores[i])),
                 "correct": None if math.isnan(c := float(rollout.correct[i])) else bool(c),
                 "components": {k: number(float(v[i])) for k, v in rollout.components.items()},
                 "advantage": None if advantages is None else number(float(advantages[i]))}
                for i in range(len(rollout))]


def markdown(rows: list[dict[str, Any]]) -> str:
    """A TensorBoard text table (TensorBoard renders Markdown)."""
    def cell(value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value)
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| prompt | completion | reward | advantage |", "| --- | --- | --- | --- |"]
    lines += [f"| {cell(r['prompt'])} | {cell(r['completion'])} | {r['reward']} | {r['advantage']} |" for r in rows]
    return "\n".join(lines)
