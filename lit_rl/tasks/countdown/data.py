"""``CountdownData``: generated Countdown puzzles as a DataModule."""

import random
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lit_rl.data import ResumableBatches, collate
from lit_rl.tasks.countdown.puzzles import Template, make_split, wrong_answer


class CountdownData(LightningDataModule):
    """Countdown puzzles: a training split of prompts (with demonstrations for SFT) and a disjoint held-out
    split for validation. Every puzzle is solvable; the same seed gives the same puzzles."""

    def __init__(
        self,
        batch_size: int = 16,
        val_batch_size: int = 64,
        train_size: int = 20000,
        val_size: int = 200,
        num_numbers: int = 3,
        min_number: int = 1,
        max_number: int = 20,
        template: Template = "paper",
        demonstrations: bool = False,
        wrong_fraction: float = 0.0,
        seed: int = 0,
    ) -> None:
        """
        Args:
            batch_size: prompts per training step (each is sampled ``group_size`` times by RL modules).
            train_size: puzzles in the training split; val_size: puzzles in the held-out split.
            num_numbers, min_number, max_number: how many numbers a puzzle has and their range.
            template: ``paper`` ("Using the numbers [..], create an equation that equals T.") or ``short``.
            demonstrations: add a ``completion`` to each training row (for SFT).
            wrong_fraction: share of demonstrations that are well-formed but wrong (an imperfect warm start).
            seed: the puzzles' seed.
        """
        super().__init__()
        if num_numbers < 1 or min_number > max_number or min_number < 0:
            raise ValueError(f"invalid puzzle settings: num_numbers={num_numbers}, range [{min_number}, {max_number}]")
        if not 0 <= wrong_fraction <= 1:
            raise ValueError(f"wrong_fraction must be in [0, 1] (got {wrong_fraction})")
        if wrong_fraction > 0 and num_numbers < 2:
            raise ValueError(f"wrong_fraction > 0 needs num_numbers >= 2 (got {num_numbers}): a puzzle of one "
                             "number has no wrong answer")
        self.save_hyperparameters()
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.template, self.demonstrations, self.wrong_fraction, self.seed = template, demonstrations, wrong_fraction, seed
        self.puzzle_kwargs = {"num_numbers": num_numbers, "min_number": min_number, "max_number": max_number}
        self.train_size, self.val_size = train_size, val_size

    def setup(self, stage: str | None = None) -> None:
        self.train_rows = self._rows(make_split("train", self.train_size, self.seed, **self.puzzle_kwargs),
                                     self.demonstrations)
        self.val_rows = self._rows(make_split("val", self.val_size, self.seed, **self.puzzle_kwargs), False)

    def _rows(self, puzzles: list, demonstrations: bool) -> list[dict[str, Any]]:
        rng = random.Random(f"{self.seed}-demonstrations")
        rows = []
        for p in puzzles:
            row = {"prompt": p.prompt(self.template), "meta": p.meta}
            if demonstrations:
                answer = wrong_answer(rng, p) if rng.random() < self.wrong_fraction else p.solution
                row["completion"] = f"<answer>{answer}</answer>"
            rows.append(row)
        return rows

    def train_dataloader(self) -> ResumableBatches:
        return ResumableBatches(self.train_rows, self.batch_size, self.seed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_rows, batch_size=self.val_batch_size, collate_fn=collate)


def export_prompts(path: str, split: str = "train", size: int = 4000, seed: int = 0, template: Template = "paper",
                   **puzzle_kwargs: Any) -> None:
    """Write one split's puzzles as a prompt file (``prompt``, ``numbers``, ``target``) for ``lit_rl.PromptData``:
    the shipped ``builtin:countdown-prompts.jsonl`` (train, 4000) and ``countdown-prompts-val.jsonl`` (val, 500)."""
    import json

    with open(path, "w") as f:
        for p in make_split(split, size, seed, **puzzle_kwargs):
            f.write(json.dumps({"prompt": p.prompt(template), **p.meta}) + "\n")
