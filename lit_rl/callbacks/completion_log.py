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
    object a line: ``step``, ``prompt``, ``completion``, ``reward``, ``correct``, ``components``, ``advantage``, and
    for multi-turn episodes ``turns``, the model's turns and the environment's answers as messages)
    and shows them as a TensorBoard text summary. A prompt or completion longer than ``max_chars`` is cut to its
    last ``max_chars`` characters behind a ``[... N characters cut]`` marker, so long prompts cannot grow the log
    by megabytes a step. A resumed run first keeps only the lines of the steps before the checkpoint (from the
    checkpoint's run directory when it resumes into a new one), so no line is duplicated or lost; a last line
    torn by a kill is dropped. Without a logger there is no run directory and nothing is written. Shipped by
    ``RLModule.configure_callbacks``; ``per_step: 0`` turns it off."""

    def __init__(self, per_step: int = 8, filename: str = "completions.jsonl", tensorboard: bool = True,
                 max_chars: int = 2000) -> None:
        """
        Args:
            per_step: samples logged per rollout (whole groups first: rows are prompt-major).
            filename: the file's name inside the run directory.
            tensorboard: also add them to TensorBoard as a text summary (tag ``completions``).
            max_chars: the longest prompt or completion text logged whole.
        """
        if per_step < 0:
            raise ValueError(f"CompletionLog: per_step must be >= 0 (got {per_step})")
        if max_chars < 1:
            raise ValueError(f"CompletionLog: max_chars must be >= 1 (got {max_chars})")
        self.per_step, self.filename, self.tensorboard, self.max_chars = per_step, filename, tensorboard, max_chars
        self.written: str | None = None                                 # the file this run appends to

    def path(self, trainer: Trainer) -> Path | None:
        log_dir = trainer.log_dir if trainer.loggers else None           # a broadcast: every rank asks, once
        return Path(log_dir, self.filename) if log_dir else None

    def state_dict(self) -> dict[str, Any]:
        return {"path": self.written}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.written = state.get("path")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = self.path(trainer)
        if not trainer.is_global_zero or path is None:
            return
        source = Path(self.written) if self.written and Path(self.written).exists() else path
        self.written = str(path)
        if source.exists():
            kept = [line for line in read_log(source) if line["step"] < trainer.global_step]
            atomic_write(path, lambda f: f.write("".join(json.dumps(line) + "\n" for line in kept).encode()))

    def on_rollout_end(self, trainer: Trainer, pl_module: LightningModule, rollout: RolloutBatch) -> None:
        path = self.path(trainer)
        if not trainer.is_global_zero or path is None or self.per_step == 0 or len(rollout) == 0:
            return
        rows = self.rows(pl_module, rollout.select(slice(0, self.per_step)), trainer.global_step, self.max_chars)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
        for logger in trainer.loggers if self.tensorboard else []:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_text("completions", markdown(rows), trainer.global_step)

    @staticmethod
    def rows(pl_module: Any, rollout: RolloutBatch, step: int, max_chars: int = 2000) -> list[dict[str, Any]]:
        texts = rollout.texts
        if not texts:                                                   # a batch made without its texts
            stop = getattr(getattr(pl_module, "sampling", None), "stop", ())
            texts = pl_module.policy.decode(rollout.completion_ids, rollout.completion_mask, stop)
        advantages = rollout.advantages
        if advantages is not None and advantages.dim() == 2:                # per-token: the mean over the tokens
            mask = rollout.loss_mask
            advantages = (advantages * mask).sum(-1) / mask.sum(-1).clamp(min=1)

        def number(x: float) -> float | None:
            return None if math.isnan(x) else round(x, 6)

        return [{"step": step,
                 "prompt": cut(rollout.prompts[i], max_chars) if rollout.prompts else None,
                 "completion": cut(texts[i], max_chars),
                 "reward": number(float(rollout.scores[i])),
                 "correct": None if math.isnan(c := float(rollout.correct[i])) else bool(c),
                 "components": {k: number(float(v[i])) for k, v in rollout.components.items()},
                 **({"turns": cut(rollout.turns[i], max_chars)} if rollout.turns else {}),
                 "advantage": None if advantages is None else number(float(advantages[i]))}
                for i in range(len(rollout))]


def cut(text: Any, max_chars: int) -> Any:
    """Text longer than ``max_chars`` as its last ``max_chars`` characters (where a prompt asks and a completion
    answers) behind a marker; chat messages each so."""
    if isinstance(text, list):
        return [{**m, "content": cut(m["content"], max_chars)} for m in text]
    if not isinstance(text, str) or len(text) <= max_chars:
        return text
    return f"[... {len(text) - max_chars} characters cut]{text[-max_chars:]}"


def read_log(path: Path) -> list[dict[str, Any]]:
    """The lines of a completion log; a last line torn by a kill (no newline, or cut JSON) is dropped, any other
    unreadable line is named."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):                                    # no newline after it: torn by a kill
                break
            raise ValueError(f"{path}:{number}: not a completion log line ({err.msg}); remove the line or the "
                             f"file to resume") from None
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """A TensorBoard text table (TensorBoard renders Markdown)."""
    def cell(value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value)
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| prompt | completion | reward | advantage |", "| --- | --- | --- | --- |"]
    lines += [f"| {cell(r['prompt'])} | {cell(r['completion'])} | {r['reward']} | {r['advantage']} |" for r in rows]
    return "\n".join(lines)
