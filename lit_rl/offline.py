"""Stored rollouts: reading, checking and grouping a dataset of scored completions, and ``OfflineData``.

A dataset is JSONL, Parquet, a directory saved by ``datasets`` (``save_to_disk``) or a hub dataset id. It holds
one of two row shapes:

- **scored completions** (what ``lit-rl generate`` writes): ``prompt``, ``completion``, ``reward``, and
  optionally ``meta``, ``correct``, ``prompt_index``, ``prompt_ids``, ``completion_ids``, ``behaviour_logps``;
- **preference pairs**: ``prompt``, ``chosen``, ``rejected`` (a group of two with rewards 1 and 0).

Rows are grouped by prompt (by ``prompt_index`` when present, else by the prompt text) into *groups*: one
training item per prompt with all its completions, which pairwise and listwise objectives need.
"""

import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule

from lit_rl.checkpointing import atomic_torch_save
from lit_rl.data import CountdownData, ResumableBatches
from lit_rl.policy import resolve
from lit_rl.rewards import RewardFunction, score_all

Group = dict[str, Any]
CACHE = Path.home() / ".cache" / "lit_rl" / "behaviour"


def read_rows(path: str) -> list[tuple[str, dict[str, Any]]]:
    """``(where, row)`` pairs; ``where`` names the file and line (or row) for error messages."""
    source = Path(resolve(path))
    if source.suffix in (".jsonl", ".json"):
        rows = []
        with source.open() as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{source}:{number}: not valid JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{source}:{number}: a row must be a JSON object, got {type(row).__name__}")
                rows.append((f"{source}:{number}", row))
        return rows
    if source.suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"{source} row {i}", row) for i, row in enumerate(pq.read_table(source).to_pylist())]
    import datasets

    dataset = datasets.load_from_disk(str(source)) if source.is_dir() else datasets.load_dataset(path, split="train")
    return [(f"{path} row {i}", row) for i, row in enumerate(dataset)]


def _check(where: str, row: dict[str, Any]) -> None:
    def need(key: str, kind: type | tuple, optional: bool = False) -> None:
        if key not in row or row[key] is None:
            if not optional:
                raise ValueError(f"{where}: missing field {key!r} (has {sorted(row)})")
        elif not isinstance(row[key], kind) or isinstance(row[key], bool) and kind is not bool:
            raise ValueError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, "
                             f"got {type(row[key]).__name__}")

    need("prompt", str)
    if "chosen" in row:
        need("chosen", str)
        need("rejected", str)
        return
    need("completion", str)
    need("reward", (int, float))
    need("meta", dict, optional=True)
    need("correct", bool, optional=True)
    if not math.isfinite(row["reward"]):
        raise ValueError(f"{where}: reward is {row['reward']}")
    for key in ("prompt_ids", "completion_ids", "behaviour_logps"):
        need(key, list, optional=True)
    if row.get("behaviour_logps") is not None:
        if row.get("completion_ids") is None or len(row["behaviour_logps"]) != len(row["completion_ids"]):
            raise ValueError(f"{where}: behaviour_logps needs completion_ids of the same length")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in row["behaviour_logps"]):
            raise ValueError(f"{where}: behaviour_logps holds a value that is not a finite number")


def group_rows(rows: list[tuple[str, dict[str, Any]]]) -> list[Group]:
    """Check every row and gather each prompt's completions into one group (first-seen prompt order)."""
    groups: dict[Any, Group] = {}
    for where, row in rows:
        _check(where, row)
        if "chosen" in row:
            completions = [(row["chosen"], 1.0), (row["rejected"], 0.0)]
            key = (where,)                                               # every pair is its own group
        else:
            completions = [(row["completion"], float(row["reward"]))]
            key = row.get("prompt_index", row["prompt"])
        group = groups.setdefault(key, {"prompt": row["prompt"], "meta": row.get("meta") or {},
                                        "prompt_ids": row.get("prompt_ids"), "completions": [], "rewards": [],
                                        "correct": [], "completion_ids": [], "behaviour_logps": [], "where": where})
        if group["prompt"] != row["prompt"]:
            raise ValueError(f"{where}: prompt_index {key} was first seen at {group['where']} with another prompt")
        for text, reward in completions:
            group["completions"].append(text)
            group["rewards"].append(reward)
            group["correct"].append(bool(row.get("correct", False)))
            group["completion_ids"].append(row.get("completion_ids"))
            group["behaviour_logps"].append(row.get("behaviour_logps"))
    result = list(groups.values())
    if not result:
        raise ValueError("the dataset has no rows")
    sizes = {len(g["completions"]) for g in result}
    if len(sizes) > 1:
        odd = next(g for g in result if len(g["completions"]) != len(result[0]["completions"]))
        raise ValueError(f"prompts have different numbers of completions {sorted(sizes)}; e.g. {odd['where']} "
                         f"has {len(odd['completions'])}, the first prompt {len(result[0]['completions'])}")
    for g in result:
        for key in ("completion_ids", "behaviour_logps"):
            if any(v is None for v in g[key]):
                g[key] = None
    return result


class OfflineData(LightningDataModule):
    """Training batches from a stored dataset of scored completions (or preference pairs); validation from
    another DataModule (by default Countdown's held-out split). One batch is ``batch_size`` *prompts* with
    all of their completions, prompt-major, for every offline objective alike."""

    def __init__(
        self,
        path: str = "builtin:countdown-rollouts.parquet",
        batch_size: int = 16,
        reward: RewardFunction | None = None,
        behaviour_model: str | None = None,
        behaviour_temperature: float = 1.0,
        validation: LightningDataModule | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            path: JSONL, Parquet, a ``datasets`` directory, a hub dataset id, or ``builtin:NAME`` (shipped).
            batch_size: prompts per training step.
            reward: re-score every completion with this reward instead of the stored one (relabelling, e.g.
                the Countdown study's reward A then B, without regenerating).
            behaviour_model: the model that generated the data; when rows lack ``behaviour_logps`` they are
                computed with it once and cached under ``~/.cache/lit_rl/behaviour``.
            behaviour_temperature: the sampling temperature the behaviour log-probs are computed at.
            validation: DataModule whose ``val_dataloader`` is used (default: ``CountdownData()``).
            seed: the order of training batches.
        """
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.path, self.batch_size, self.reward, self.seed = path, batch_size, reward, seed
        self.behaviour_model, self.behaviour_temperature = behaviour_model, behaviour_temperature
        self.validation = validation if validation is not None else CountdownData()

    def setup(self, stage: str | None = None) -> None:
        self.validation.setup(stage)
        if hasattr(self, "groups"):
            return
        self.groups = group_rows(read_rows(self.path))
        if self.reward is not None:
            for g in self.groups:
                scores = score_all(self.reward, g["completions"], [g["meta"]] * len(g["completions"]))
                g["rewards"], g["correct"] = [s.reward for s in scores], [s.correct for s in scores]
        if self.behaviour_model is not None and any(g["behaviour_logps"] is None for g in self.groups):
            add_behaviour_logps(self.groups, self.behaviour_model, self.behaviour_temperature, self.path)

    @property
    def group_size(self) -> int:
        return len(self.groups[0]["completions"])

    def train_dataloader(self) -> ResumableBatches:
        return ResumableBatches(self.groups, self.batch_size, self.seed)

    def val_dataloader(self) -> Any:
        return self.validation.val_dataloader()


@torch.no_grad()
def add_behaviour_logps(groups: list[Group], model: str, temperature: float, path: str) -> None:
    """Fill in token ids and behaviour log-probs computed with ``model``; cached by dataset, model and
    temperature, so a second run (or a resumed one) reads them back instead of recomputing."""
    from lit_rl.policy import Policy

    source = Path(resolve(path))
    stamp = f"{source.resolve()}|{source.stat().st_size if source.exists() else ''}|{model}|{temperature}"
    cache = CACHE / f"{hashlib.sha1(stamp.encode()).hexdigest()[:16]}.pt"
    stored = None
    if cache.exists():
        try:
            stored = torch.load(cache)
        except Exception as err:                                        # e.g. written by a pre-atomic version
            warnings.warn(f"behaviour log-prob cache {cache} is unreadable ({type(err).__name__}); recomputing it",
                          stacklevel=2)
    if stored is None:
        policy = Policy.load(model).eval()
        stored = []
        for g in groups:
            n = len(g["completions"])
            completion_ids, completion_mask = (policy.pad(g["completion_ids"], left=False) if g["completion_ids"]
                                               else policy.encode_completions(g["completions"]))
            prompt_ids, prompt_mask = (policy.pad([g["prompt_ids"]], left=True) if g["prompt_ids"]
                                       else policy.encode_prompts([g["prompt"]], completion_ids.shape[1]))
            logps = policy.logps(prompt_ids.expand(n, -1), prompt_mask.expand(n, -1), completion_ids,
                                 completion_mask, temperature)[0]
            lengths = completion_mask.sum(-1).tolist()
            stored.append({"prompt_ids": prompt_ids[0][prompt_mask[0].bool()].tolist(),
                           "completion_ids": [ids[:k].tolist() for ids, k in zip(completion_ids, lengths)],
                           "behaviour_logps": [lp[:k].tolist() for lp, k in zip(logps, lengths)]})
        atomic_torch_save(stored, cache)                                # a kill never leaves a torn cache
    for g, s in zip(groups, stored, strict=True):
        g.update(s)
