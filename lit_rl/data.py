"""Prompt data. Batches are dicts of lists: ``prompt`` (text), ``meta`` (what the reward needs) and, for
supervised data, ``completion``."""

import random
from collections.abc import Iterator
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lit_rl.tasks.countdown import Template, make_split, wrong_answer


def collate(rows: list[dict[str, Any]]) -> dict[str, list]:
    return {key: [row[key] for row in rows] for key in rows[0]}


class ResumableBatches:
    """Training batches in a fresh order each epoch, drawn from ``(seed, epoch)`` alone, that remember how
    far they got. Lightning stores ``state_dict`` in checkpoints, so a resumed run continues with the very
    batch the interrupted one would have drawn next (a plain shuffled DataLoader restarts its epoch).
    Under ``torch.distributed`` every rank shares the order and takes every ``world_size``-th batch."""

    def __init__(self, rows: list[dict[str, Any]], batch_size: int, seed: int = 0) -> None:
        if len(rows) < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the {len(rows)} training rows")
        self.rows, self.batch_size, self.seed = rows, batch_size, seed
        self.epoch, self.position = 0, 0                                 # position: batches this rank has had

    @staticmethod
    def _rank_and_world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return len(self.rows) // self.batch_size // self._rank_and_world()[1]   # partial batches are dropped

    def __iter__(self) -> Iterator[dict[str, list]]:
        if self.position >= len(self):                                  # the last epoch was used up: a new one
            self.epoch, self.position = self.epoch + 1, 0               # (Lightning never asks past an epoch's end)
        rank, world = self._rank_and_world()
        order = torch.randperm(len(self.rows), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        while self.position < len(self):
            start = (self.position * world + rank) * self.batch_size
            self.position += 1
            yield collate([self.rows[i] for i in order[start:start + self.batch_size].tolist()])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


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
