"""Prompt data. Batches are dicts of lists: ``prompt`` (text, or chat messages), ``meta`` (a dict of the row's
other columns, which reach the reward) and, for supervised data, ``completion``. Stored groups of scored
completions come as :class:`lit_rl.offline.StoredGroups` instead."""

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader

from lit_rl.rewards import Prompt
from lit_rl.rewards.base import each_reward
from lit_rl.rows import check_prompt, has_splits, read_rows


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
            val_split: held-out prompts from another split of ``path`` (e.g. ``test``); a file has no splits.
            val_fraction: held-out prompts as a seeded share of ``path``'s distinct prompts (every copy of a prompt
                lands on the same side), disjoint from training.
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
            check_splits(self.path, self.split, self.val_split)
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
        each_reward((getattr(module, "reward_fn", None), getattr(module, "gold_reward_fn", None)), "check_rows", rows)

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
        pairs = read_rows(path, self.name, split)
        rows = [self._row(where, row) for where, row in pairs]
        if not rows:
            raise ValueError(f"PromptData: {path} (split {split!r}) has no rows")
        warn_duplicates(path, [(where, row[self.prompt]) for where, row in pairs])
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


def check_splits(path: str, split: str, val_split: str | None) -> None:
    """A file (or a saved single ``Dataset``) has no splits: a ``split`` or ``val_split`` would read the very same
    rows, so validation would report training accuracy. Refused rather than ignored."""
    if val_split is not None and val_split == split:
        raise ValueError(f"PromptData: val_split={val_split!r} is the training split too, so validation would run on "
                         f"the training rows; name another split, or use val_path or val_fraction")
    if has_splits(path):
        return
    if val_split is not None:
        raise ValueError(f"PromptData: val_split={val_split!r}, but {path} is a file (or a saved Dataset) and has no "
                         f"splits, so validation would run on the training rows; hold prompts out with val_path "
                         f"(another file) or val_fraction (a seeded share of this one)")
    if split != "train":
        raise ValueError(f"PromptData: split={split!r}, but {path} is a file (or a saved Dataset) and has no splits; "
                         f"leave split at 'train' (the whole file) or give the file that holds that split as path")


def prompt_key(prompt: Prompt) -> str:
    """A hashable key for text or chat messages."""
    return json.dumps(prompt, sort_keys=True)


def warn_duplicates(path: str, prompts: list[tuple[str, Prompt]], shown: int = 3) -> None:
    """Warn once per dataset when a prompt recurs: each copy is sampled and scored as a prompt of its own."""
    first: dict[str, str] = {}
    repeats = []
    for where, prompt in prompts:
        key = prompt_key(prompt)
        if key in first:
            repeats.append(f"{where} repeats {first[key]}")
        first.setdefault(key, where)
    if repeats:
        listed = "; ".join(repeats[:shown]) + ("; ..." if len(repeats) > shown else "")
        rows = f"{len(repeats)} rows of {path} repeat" if len(repeats) > 1 else f"a row of {path} repeats"
        rank_zero_warn(f"PromptData: {rows} an earlier prompt ({listed}); each copy "
                       f"is sampled as a prompt of its own, and val_fraction keeps every copy of a prompt on one side")


def held_out(rows: list[dict[str, Any]], fraction: float, seed: int, path: str) -> tuple[list, list]:
    """A seeded split of ``rows`` into training and held-out rows, each in the file's order. The split is by
    distinct prompt: every copy of a prompt lands on the same side, so no held-out prompt was trained on."""
    prompts = list(dict.fromkeys(prompt_key(r["prompt"]) for r in rows))   # distinct, in the file's order
    count = round(len(prompts) * fraction)
    if not 0 < count < len(prompts):
        raise ValueError(f"PromptData: val_fraction={fraction} of the {len(prompts)} distinct prompts of {path} "
                         f"leaves an empty split")
    chosen = {prompts[i] for i in random.Random(f"{seed}-held-out").sample(range(len(prompts)), count)}
    held = [prompt_key(r["prompt"]) in chosen for r in rows]
    return [r for r, h in zip(rows, held) if not h], [r for r, h in zip(rows, held) if h]
