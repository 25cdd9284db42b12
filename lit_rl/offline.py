"""Stored rollouts: reading, checking and grouping a dataset of scored completions, and ``OfflineData``.

A dataset is anything :func:`lit_rl.rows.read_rows` reads (JSONL, JSON, CSV, Parquet, a ``save_to_disk``
directory, a hub dataset id, ``builtin:NAME``). It holds one of two row shapes:

- **scored completions** (what ``lit-rl generate`` writes): ``prompt``, ``completion``, ``reward``, and
  optionally ``meta``, ``correct``, ``prompt_index``, ``prompt_ids``, ``completion_ids``, ``behaviour_logps``;
- **preference pairs**: ``prompt``, ``chosen``, ``rejected`` (a group of two with rewards 1 and 0).

Rows may be conversational: ``prompt`` a list of chat messages (rendered with the policy's chat template) and
the completions lists of assistant messages (their contents are the completion text).

Rows are grouped by prompt (by ``prompt_index`` when present, else by the prompt text) into *groups*: one
training item per prompt with all its completions, which pairwise and listwise objectives need.
"""

import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from lit_rl.checkpointing import atomic_torch_save
from lit_rl.data import ResumableBatches
from lit_rl.policy import resolve
from lit_rl.rewards import Prompt, RewardFunction, score_batch
from lit_rl.rows import check_prompt, completion_text, read_rows

Group = dict[str, Any]
CACHE = Path.home() / ".cache" / "lit_rl" / "behaviour"


@dataclass
class StoredGroups:
    """A batch of stored groups, prompt-major: each field has one entry per prompt, and the per-completion fields
    one list per prompt (``completions[i][j]`` is prompt ``i``'s ``j``-th completion). Token ids and behaviour
    log-probs are ``None`` for a prompt whose rows did not carry them. Its type is what tells a module's
    ``make_rollout`` to replay stored completions instead of sampling (a prompt batch is a dict)."""

    prompt: list[Prompt]
    meta: list[dict[str, Any]]
    completions: list[list[str]]
    rewards: list[list[float]]
    correct: list[list[bool | None]]
    prompt_ids: list[list[int] | None]
    completion_ids: list[list[list[int]] | None]
    behaviour_logps: list[list[list[float]] | None]

    @classmethod
    def collate(cls, groups: list[Group]) -> "StoredGroups":
        return cls(**{name: [g[name] for g in groups] for name in cls.__dataclass_fields__})

    def __len__(self) -> int:
        return len(self.prompt)


def _check(where: str, row: dict[str, Any]) -> None:
    def need(key: str, kind: type | tuple, optional: bool = False) -> None:
        if key not in row or row[key] is None:
            if not optional:
                raise ValueError(f"{where}: missing field {key!r} (has {sorted(row)})")
        elif not isinstance(row[key], kind) or isinstance(row[key], bool) and kind is not bool:
            raise ValueError(f"{where}: field {key!r} must be {getattr(kind, '__name__', kind)}, "
                             f"got {type(row[key]).__name__}")

    need("prompt", (str, list))
    check_prompt(where, "prompt", row["prompt"])
    if "chosen" in row:
        need("chosen", (str, list))
        need("rejected", (str, list))
        return
    need("completion", (str, list))
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
            completions = [(completion_text(where, "chosen", row["chosen"]), 1.0),
                           (completion_text(where, "rejected", row["rejected"]), 0.0)]
        else:
            completions = [(completion_text(where, "completion", row["completion"]), float(row["reward"]))]
        prompt_key = row.get("prompt_index", json.dumps(row["prompt"]))
        key = (where,) if "chosen" in row else prompt_key                # every pair is its own group
        group = groups.setdefault(key, {"prompt": row["prompt"], "meta": row.get("meta") or {},
                                        "prompt_key": prompt_key, "prompt_ids": row.get("prompt_ids"),
                                        "completions": [], "rewards": [], "correct": [], "completion_ids": [],
                                        "behaviour_logps": [], "where": where})
        if group["prompt"] != row["prompt"]:
            raise ValueError(f"{where}: prompt_index {key} was first seen at {group['where']} with another prompt")
        for text, reward in completions:
            group["completions"].append(text)
            group["rewards"].append(reward)
            group["correct"].append(None if "chosen" in row else row.get("correct"))
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
    """Training batches from a stored dataset of scored completions (or preference pairs); validation, if any,
    from another DataModule. One batch is ``batch_size`` *prompts* with all of their completions, prompt-major,
    for every offline objective alike."""

    def __init__(
        self,
        path: str = "builtin:countdown-rollouts.parquet",
        batch_size: int = 16,
        reward: RewardFunction | None = None,
        behaviour_model: str | None = None,
        behaviour_temperature: float = 1.0,
        validation: LightningDataModule | None = None,
        seed: int = 0,
        val_fraction: float = 0.0,
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
            validation: DataModule whose ``val_dataloader`` is used (e.g. ``lit_rl.PromptData`` with held-out
                prompts); none by default (no validation).
            seed: the order of training batches.
            val_fraction: hold out this share of the prompts (whole groups, drawn from ``seed``) as validation
                batches of stored groups (e.g. a reward model's held-out pairs); instead of ``validation``.
        """
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        self.path, self.batch_size, self.reward, self.seed = path, batch_size, reward, seed
        self.behaviour_model, self.behaviour_temperature = behaviour_model, behaviour_temperature
        self.validation = validation
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1) (got {val_fraction})")
        if val_fraction and validation is not None:
            raise ValueError("give OfflineData either val_fraction or a validation DataModule, not both")
        self.val_fraction = val_fraction

    def setup(self, stage: str | None = None) -> None:
        if self.validation is not None:
            self.validation.trainer = self.trainer
            self.validation.setup(stage)
        if hasattr(self, "groups"):
            return
        self.groups = group_rows(read_rows(self.path))
        if self.reward is not None:
            for g in self.groups:
                n = len(g["completions"])
                scores = score_batch(self.reward, [g["prompt"]] * n, g["completions"], [g["meta"]] * n)
                g["rewards"], g["correct"] = [s.reward for s in scores], [s.correct for s in scores]
        if self.behaviour_model is not None and any(g["behaviour_logps"] is None for g in self.groups):
            add_behaviour_logps(self.groups, self.behaviour_model, self.behaviour_temperature, self.path)
        self.val_groups: list[Group] = []
        if self.val_fraction:
            prompts = list(dict.fromkeys(g["prompt_key"] for g in self.groups))  # a prompt's pairs stay together
            order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(self.seed)).tolist()
            held = {prompts[i] for i in order[:max(1, round(self.val_fraction * len(prompts)))]}
            self.val_groups = [g for g in self.groups if g["prompt_key"] in held]
            self.groups = [g for g in self.groups if g["prompt_key"] not in held]

    @property
    def group_size(self) -> int:
        return len(self.groups[0]["completions"])

    def train_dataloader(self) -> ResumableBatches:
        return ResumableBatches(self.groups, self.batch_size, self.seed, collate=StoredGroups.collate)

    def val_dataloader(self) -> Any:
        if self.val_groups:
            return DataLoader(self.val_groups, batch_size=self.batch_size, collate_fn=StoredGroups.collate)
        return [] if self.validation is None else self.validation.val_dataloader()


def content_digest(name: str) -> str:
    """A digest of what a local file or directory holds (every file's relative path and bytes), so an edited
    dataset or a retrained model at the same path never reads another's cache; a hub id is its name."""
    source = Path(resolve(name))
    if not source.exists():
        return name
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.relative_to(source) if file != source else ''}\0".encode())
        with file.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


@torch.no_grad()
def add_behaviour_logps(groups: list[Group], model: str, temperature: float, path: str) -> None:
    """Fill in token ids and behaviour log-probs computed with ``model``; cached by dataset, model and
    temperature, so a second run (or a resumed one) reads them back instead of recomputing."""
    from lit_rl.policy import Policy

    stamp = f"{content_digest(path)}|{content_digest(model)}|{temperature}"
    cache = CACHE / f"{hashlib.sha256(stamp.encode()).hexdigest()[:32]}.pt"
    stored = None
    if cache.exists():
        try:
            stored = torch.load(cache, weights_only=True)
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
