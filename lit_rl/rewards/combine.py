"""Several rewards as one: a weighted sum, each component logged and stored per sample."""

import inspect
import json
import math
from collections.abc import Hashable
from typing import Any, Literal

from lit_rl.rewards.base import (Columns, Prompt, RewardFunction, Score, call_score, checked_scores, each_reward,
                                 reward_name, run_awaitables)

Mode = Literal["sum", "normalize_then_sum"]


def group_normalize(values: list[float | None], groups: list[Hashable], eps: float = 1e-6) -> list[float | None]:
    """``(v - mean_g) / (std_g + eps)`` within each group of completions with equal ``groups`` keys (std
    Bessel-corrected, over the group's non-``None`` values); a value alone in its group becomes 0 (GDPO, Liu et
    al. 2026, eq. 4)."""
    members: dict[Hashable, list[int]] = {}
    for i, (group, value) in enumerate(zip(groups, values, strict=True)):
        if value is not None:
            members.setdefault(group, []).append(i)
    out: list[float | None] = [None] * len(values)
    for rows in members.values():
        group = [values[i] for i in rows]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((v - mean) ** 2 for v in group) / (len(group) - 1)) if len(group) > 1 else 0.0
        for i in rows:
            out[i] = (values[i] - mean) / (std + eps) if len(group) > 1 else 0.0
    return out


class Rewards(RewardFunction):
    """``R = sum_k w_k r_k`` over several rewards (``mode: sum``), or over each reward standardised within its
    prompt's group first (``mode: normalize_then_sum``, GDPO's decoupled normalisation: a reward on a small scale
    is not drowned by one on a large scale). A group is the samples of one dataset row: the module passes each
    sample's row index as ``groups`` (two rows with the same prompt stay apart); called without ``groups``, the
    samples sharing a prompt text form a group.

    A component may return ``None`` for a completion it has no opinion on (a math reward on a code prompt); it
    then adds nothing to that completion's sum, and a completion no component scored is an error. A completion
    is ``correct`` when every component that judges correctness says so (``None`` if none judges). Components are
    logged as ``reward/<name>_mean`` and stored per sample by their raw values (before weights and normalisation).
    Departure: under ``normalize_then_sum`` a completion alone in its group (validation samples once per prompt)
    gets 0 from every component, so ``val/reward_mean`` is 0 there; read the components and the accuracy instead.
    """

    def __init__(self, rewards: list[RewardFunction], weights: list[float] | None = None, mode: Mode = "sum") -> None:
        """
        Args:
            rewards: the components.
            weights: one weight per component (default: all 1).
            mode: ``sum`` or ``normalize_then_sum``.
        """
        if not rewards:
            raise ValueError("Rewards needs at least one reward")
        weights = [1.0] * len(rewards) if weights is None else list(weights)
        if len(weights) != len(rewards):
            raise ValueError(f"Rewards got {len(weights)} weights for {len(rewards)} rewards")
        for k, weight in enumerate(weights):                            # else a NaN weight reads as a NaN reward
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise ValueError(f"Rewards weight {k} (for {reward_name(rewards[k])}) is {weight!r}; weights must be "
                                 f"finite numbers")
        if mode not in ("sum", "normalize_then_sum"):
            raise ValueError(f"unknown Rewards mode {mode!r}; choose 'sum' or 'normalize_then_sum'")
        self.rewards, self.weights, self.mode = list(rewards), weights, mode
        self.names: list[str] = []
        for reward in self.rewards:                                     # unique names: math, format, format_2
            name, k = reward_name(reward), 2
            while name in self.names:
                name, k = f"{reward_name(reward)}_{k}", k + 1
            self.names.append(name)

    def check_rows(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        each_reward(self.rewards, "check_rows", rows)

    def check_sampling(self, max_new_tokens: int, tokenizer: Any) -> None:
        each_reward(self.rewards, "check_sampling", max_new_tokens, tokenizer)

    def bind(self, device: Any, dtype: Any = None, training: bool = True) -> None:
        each_reward(self.rewards, "bind", device, dtype, training)

    def state_dict(self) -> dict[str, Any]:
        """Each component's state by its name (components without state are left out)."""
        states = {n: r.state_dict() for n, r in zip(self.names, self.rewards) if callable(getattr(r, "state_dict", None))}
        return {n: state for n, state in states.items() if state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, reward in zip(self.names, self.rewards):
            if name in state:
                reward.load_state_dict(state[name])

    def score(self, prompts: list[Prompt], completions: list[str], columns: Columns, *,
              groups: list[Hashable] | None = None, completion_ids: list[list[int]] | None = None,
              episodes: list[list[dict]] | None = None) -> list[Score]:
        outs = [call_score(r, prompts, completions, columns, groups=groups, completion_ids=completion_ids,
                           episodes=episodes)
                for r in self.rewards]                                  # each on its own copies
        waiting = [k for k, out in enumerate(outs) if inspect.isawaitable(out)]
        for k, out in zip(waiting, run_awaitables([outs[k] for k in waiting])):   # async components, concurrently
            outs[k] = out
        parts = [checked_scores(r, out, completions, allow_none=True) for r, out in zip(self.rewards, outs)]  # [K][N]
        raw = [[None if s is None else s.reward for s in part] for part in parts]
        if groups is None:                                              # a direct call: group by prompt text
            groups = [p if isinstance(p, str) else json.dumps(p) for p in prompts]
        summed = [group_normalize(values, groups) for values in raw] if self.mode == "normalize_then_sum" else raw
        scores = []
        for i, completion in enumerate(completions):
            if all(values[i] is None for values in raw):
                raise ValueError(f"no reward of {self.names} scored sample {i} (every one returned None; "
                                 f"completion {completion[:200]!r})")
            total = sum(w * values[i] for w, values in zip(self.weights, summed) if values[i] is not None)
            judged = [part[i].correct for part in parts if part[i] is not None and part[i].correct is not None]
            components = {n: math.nan if values[i] is None else values[i] for n, values in zip(self.names, raw)}
            scores.append(Score(total, all(judged) if judged else None, components))
        return scores
