"""Bradley-Terry reward-model training: the pairwise loss, its accuracy, and which pairs a scored group gives."""

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

PairMode = Literal["all", "best_worst"]


def bradley_terry_loss(chosen: Tensor, rejected: Tensor, margin: Tensor | float = 0.0,
                       center_coef: float = 0.0) -> Tensor:
    """Per-pair loss ``-log sigmoid(r_c - r_r - m) + coef * (r_c + r_r)^2`` ``[N]``.

    Bradley & Terry (1952) as the reward-model objective of Ouyang et al. 2022 (eq. 1); the margin ``m`` is
    Llama 2's (Touvron et al. 2023, eq. 2: a larger margin for clearer preferences); the centring term keeps the
    scores near zero, which the pairwise loss alone leaves free (Eisenstein et al. 2023; TRL's
    ``center_rewards_coefficient``). ``F.logsigmoid`` stays finite for large differences of either sign.
    """
    delta = chosen - rejected - margin                                  # [N]
    return -F.logsigmoid(delta) + center_coef * (chosen + rejected) ** 2  # [N]


def pairwise_accuracy(chosen: Tensor, rejected: Tensor) -> Tensor:
    """The share of pairs the model orders right, ``[N] -> []``; a tie counts half (the chance level)."""
    return ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean()


def preference_pairs(completions: list[str], rewards: list[float], mode: PairMode = "all",
                     min_gap: float = 0.0) -> list[tuple[int, int]]:
    """``(chosen, rejected)`` indices of one prompt's scored completions: every pair whose rewards differ by more
    than ``min_gap`` (``all``), or only the best against the worst (``best_worst``, ties to the earliest).
    Identical texts never make a pair (their order would be noise: the same text cannot be better than itself).
    """
    if mode not in ("all", "best_worst"):
        raise ValueError(f"unknown pair mode {mode!r}; choose 'all' or 'best_worst'")
    order = range(len(rewards))
    if mode == "best_worst":
        best = max(order, key=lambda i: (rewards[i], -i))
        worst = min(order, key=lambda i: (rewards[i], i))
        candidates = [(best, worst)]
    else:
        candidates = [(i, j) for i in order for j in order if rewards[i] > rewards[j]]
    seen, pairs = set(), []
    for i, j in candidates:
        key = (completions[i], completions[j])
        if rewards[i] - rewards[j] > min_gap and completions[i] != completions[j] and key not in seen:
            seen.add(key)
            pairs.append((i, j))
    return pairs
