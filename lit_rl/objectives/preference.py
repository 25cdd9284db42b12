"""Pairwise and listwise objectives over sequence log-probs: DPO (Rafailov et al. 2023), IPO (Azar et al. 2023),
REBEL (Gao et al. 2024) and the multi-completion distribution-matching objective.

Rows are prompt-major: ``G`` consecutive rows share a prompt; pairs are rows ``(2k, 2k + 1)`` = (winner, loser).
``h(y1, y2) = [L(y1) - L_ref(y1)] - [L(y2) - L_ref(y2)]``.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def sequence_logps(logps: Tensor, mask: Tensor, average: bool = False) -> Tensor:
    """``L(y) = sum_t m_t l_t`` ``[B]``, or its mean over the completion's tokens (IPO as TRL runs it)."""
    total = (logps * mask).sum(-1)                                      # [B]
    return total / mask.sum(-1).clamp(min=1) if average else total


def pair_margins(seq_logps: Tensor, ref_seq_logps: Tensor) -> Tensor:
    """``h(y_w, y_l)`` ``[B/2]`` for rows ``(2k, 2k + 1)``."""
    implicit = (seq_logps - ref_seq_logps).view(-1, 2)                  # [B/2, 2]
    return implicit[:, 0] - implicit[:, 1]                              # [B/2]


def dpo_loss(margins: Tensor, beta: float) -> Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): ``-log sigmoid(beta h)`` ``[N]``."""
    return -F.logsigmoid(beta * margins)


def ipo_loss(margins: Tensor, beta: float) -> Tensor:
    """IPO (Azar et al. 2023, eq. 17; Reward Distillation Through Ratio Matching eq. 7): ``(h - 1/(2 beta))^2``
    ``[N]``."""
    return (margins - 1.0 / (2.0 * beta)) ** 2


def rebel_loss(seq_logps: Tensor, anchor_seq_logps: Tensor, rewards: Tensor, group_size: int,
               eta: float) -> Tensor:
    """REBEL (Gao et al. 2024; Reward Distillation Through Ratio Matching eq. 9 and 13), over every pair ``i < j`` of
    each group:
    ``((1/eta) h(y_i, y_j) - (r_i - r_j))^2`` ``[P, G(G-1)/2]``. The anchor is the data-generating policy
    (eq. 9) or the reference (offline reward distillation, eq. 13: eq. 9 with ``eta = 1/beta``, times ``eta^2``)."""
    if group_size < 2:
        raise ValueError(f"REBEL needs at least 2 completions per prompt (got group_size={group_size})")
    implicit = (seq_logps - anchor_seq_logps).view(-1, group_size)      # [P, G]
    r = rewards.view(-1, group_size)                                    # [P, G]
    i, j = torch.triu_indices(group_size, group_size, offset=1, device=r.device)  # pairs i < j
    h = implicit[:, i] - implicit[:, j]                                 # [P, pairs]
    return (h / eta - (r[:, i] - r[:, j])) ** 2                         # [P, pairs]


def multi_completion_loss(seq_logps: Tensor, ref_seq_logps: Tensor, rewards: Tensor, group_size: int,
                          beta: float, temperature: float = 1.0) -> Tensor:
    """Multi-completion distribution matching (Reward Distillation Through Ratio Matching, sec. 5, Algorithm 1), per
    prompt:
    ``KL(softmax(r / temperature) || softmax(r^))`` with implicit rewards ``r^_i = beta (L(y_i) - L_ref(y_i))``;
    the target is detached. Zero exactly when ``r^_i = r_i / temperature + c(x)``. ``[P]``."""
    implicit = beta * (seq_logps - ref_seq_logps).view(-1, group_size)  # [P, G]
    target = F.log_softmax(rewards.view(-1, group_size).detach() / temperature, dim=-1)  # [P, G]
    model = F.log_softmax(implicit, dim=-1)                              # [P, G]
    return (target.exp() * (target - model)).sum(-1)                    # [P]


def best_worst(rewards: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """Rows of each group's best and worst completion, interleaved ``[2N]`` (winner first), keeping only
    the ``N`` groups whose rewards differ (a tie holds no preference). Ties break to the earliest row."""
    r = rewards.view(-1, group_size)                                    # [P, G]
    best, worst = r.argmax(-1), r.argmin(-1)                            # [P]
    keep = r.max(-1).values > r.min(-1).values                           # [P]
    offsets = torch.arange(r.shape[0], device=r.device) * group_size    # [P]
    rows = torch.stack([offsets + best, offsets + worst], -1)[keep]      # [N, 2]
    return rows.flatten(), keep
