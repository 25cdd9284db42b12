"""Prompt data. Batches are dicts of lists: ``prompt`` (text, or chat messages), ``meta`` (a dict of the row's
other columns, which reach the reward) and, for supervised data, ``completion``. Stored groups of scored
completions come as :class:`lit_rl.offline.StoredGroups` instead."""

import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from lit_rl.rewards import Prompt
from lit_rl.rows import check_prompt, read_rows


def collate(rows: list[dict[str, Any]]) -> dict[str, list]:
    return {key: [row[key] for row in rows] for key in rows[0]}


class ResumableBatches:
    """Training batches in a fresh order each epoch, drawn from ``(seed, epoch)`` alone, that remember how
    far they got. Lightning stores ``state_dict`` in checkpoints, so a resumed run continues with the very
    batch the interrupted one would have drawn next (a plain shuffled DataLoader restarts its epoch).
    Under ``torch.distributed`` every rank shares the order and takes every ``world_size``-th batch."""

    def __init__(self, rows: list[dict[str, Any]], batch_size: int, seed: int = 0,
                 collate: Callable[[list[dict[str, Any]]], Any] = collate) -> None:
        if len(rows) < batch_size:
            raise ValueError(f"batch_size={batch_size} is larger than the {len(rows)} training rows")
        self.rows, self.batch_size, self.seed, self.collate = rows, batch_size, seed, collate
        self.epoch, self.position = 0, 0                                 # position: batches this rank has had

    @staticmethod
    def _rank_and_world() -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def __len__(self) -> int:
        return len(self.rows) // self.batch_size // self._rank_and_world()[1]   # partial batches are dropped

    def __iter__(self) -> Iterator[Any]:
        if self.position >= len(self):                                  # the last epoch was used up: a new one
            self.epoch, self.position = self.epoch + 1, 0               # (Lightning never asks past an epoch's end)
        rank, world = self._rank_and_world()
        order = torch.randperm(len(self.rows), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        while self.position < len(self):
            start = (self.position * world + rank) * self.batch_size
            self.position += 1
            yield self.collate([self.rows[i] for i in order[start:start + self.batch_size].tolist()])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


class PromptData(LightningDataModule):
    """Prompts from any dataset: a hub id, a JSONL/JSON/CSV/Parquet file, a ``save_to_disk`` directory or
    ``builtin:NAME``. The ``prompt`` column is text or a list of chat messages (``{role, content}``; the module
    renders it with the tokenizer's chat template); the other columns (or those named in ``columns``) reach the
    reward. Every row is checked on load and a bad one is named by file and line."""

    def __init__(
        self,
        path: str,
        prompt: str = "prompt",
        columns: list[str] | None = None,
        name: str | None = None,
        split: str = "train",
        val_path: str | None = None,
        val_split: str | None = None,
        val_fraction: float | None = None,
        batch_size: int = 16,
        val_batch_size: int = 64,
        filter_long: bool = False,
        seed: int = 0,
    ) -> None:
        """
        Args:
            path: the training prompts (see the class docstring).
            prompt: the column holding the prompt.
            columns: the other columns that reach the reward (default: all of them).
            name, split: the hub dataset's configuration and split.
            val_path: held-out prompts from another dataset (same columns).
            val_split: held-out prompts from another split of ``path`` (e.g. ``test``).
            val_fraction: held-out prompts as a seeded share of ``path``'s rows, disjoint from training.
            batch_size: prompts per training step (each is sampled ``group_size`` times by RL modules).
            val_batch_size: prompts per validation batch.
            filter_long: drop prompts whose rendered length leaves no room for ``max_new_tokens`` in the model's
                context (the count is logged); otherwise such prompts are cut from the left with a warning.
            seed: the order of training batches and the ``val_fraction`` split.
        """
        super().__init__()
        if sum(v is not None for v in (val_path, val_split, val_fraction)) > 1:
            raise ValueError("PromptData: give at most one of val_path, val_split and val_fraction")
        if val_fraction is not None and not 0 < val_fraction < 1:
            raise ValueError(f"PromptData: val_fraction must be in (0, 1) (got {val_fraction})")
        if batch_size < 1 or val_batch_size < 1:
            raise ValueError(f"PromptData: batch_size and val_batch_size must be >= 1 (got {batch_size}, "
                             f"{val_batch_size})")
        self.save_hyperparameters()
        self.path, self.prompt, self.columns, self.name, self.split = path, prompt, columns, name, split
        self.val_path, self.val_split, self.val_fraction = val_path, val_split, val_fraction
        self.batch_size, self.val_batch_size, self.filter_long, self.seed = batch_size, val_batch_size, filter_long, seed

    def setup(self, stage: str | None = None) -> None:
        if not hasattr(self, "train_rows"):
            self.train_rows = self._load(self.path, self.split)
            self.val_rows: list[dict[str, Any]] = []
            if self.val_path is not None or self.val_split is not None:
                self.val_rows = self._load(self.val_path or self.path, self.val_split or self.split)
            elif self.val_fraction is not None:
                self.train_rows, self.val_rows = held_out(self.train_rows, self.val_fraction, self.seed, self.path)
            module = self.trainer.lightning_module if self.trainer is not None else None
            if self.filter_long and module is not None:
                self.drop_long(module.prompt_fits)
            if module is not None:
                self.check_rewards(module)

    def check_rewards(self, module: Any) -> None:
        """Let the module's rewards refuse rows they cannot score (``check_rows``: an unparsable gold answer),
        named by file:line before the first step, rather than as a batch's sample mid-run (again on resume)."""
        rows = [(row["where"], row["meta"]) for row in self.train_rows + self.val_rows]
        for reward in (getattr(module, "reward_fn", None), getattr(module, "gold_reward_fn", None)):
            if callable(check := getattr(reward, "check_rows", None)):
                check(rows)

    def drop_long(self, fits: Callable[[Prompt], bool]) -> None:
        """Keep the prompts for which ``fits`` holds (``lit-rl generate`` calls this with its model's check)."""
        for split in ("train_rows", "val_rows"):
            rows = getattr(self, split)
            kept = [r for r in rows if fits(r["prompt"])]
            if len(kept) < len(rows):
                rank_zero_info(f"PromptData: dropped {len(rows) - len(kept)} of {len(rows)} {split[:-5]} prompts of "
                               f"{self.path} that leave no room for max_new_tokens (filter_long)")
            if rows and not kept:
                raise ValueError(f"PromptData: every {split[:-5]} prompt of {self.path} is too long for the model's "
                                 f"context beside max_new_tokens")
            setattr(self, split, kept)

    def _load(self, path: str, split: str) -> list[dict[str, Any]]:
        rows = [self._row(where, row) for where, row in read_rows(path, self.name, split)]
        if not rows:
            raise ValueError(f"PromptData: {path} (split {split!r}) has no rows")
        return rows

    def _row(self, where: str, row: dict[str, Any]) -> dict[str, Any]:
        for column in [self.prompt, *(self.columns or [])]:
            if column not in row:
                raise ValueError(f"{where}: column {column!r} is missing (the row has {sorted(row)})")
        check_prompt(where, self.prompt, row[self.prompt])
        keep = self.columns if self.columns is not None else [k for k in row if k != self.prompt]
        return {"prompt": row[self.prompt], "meta": {k: row[k] for k in keep}, "where": where}

    def train_dataloader(self) -> ResumableBatches:
        return ResumableBatches(self.train_rows, self.batch_size, self.seed)

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_rows:
            return []
        return DataLoader(self.val_rows, batch_size=self.val_batch_size, collate_fn=collate)


def held_out(rows: list[dict[str, Any]], fraction: float, seed: int, path: str) -> tuple[list, list]:
    """A seeded split of ``rows`` into training and held-out rows, disjoint, each in the file's order."""
    count = round(len(rows) * fraction)
    if not 0 < count < len(rows):
        raise ValueError(f"PromptData: val_fraction={fraction} of the {len(rows)} rows of {path} leaves an empty split")
    chosen = set(random.Random(f"{seed}-held-out").sample(range(len(rows)), count))
    return ([r for i, r in enumerate(rows) if i not in chosen], [r for i, r in enumerate(rows) if i in chosen])
