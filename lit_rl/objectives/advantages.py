"""Advantage estimators. All outputs are detached: advantages are constants of the loss.

Rewards of a rollout batch are laid out prompt-major: ``rewards[p * G + g]`` is sample ``g`` of prompt ``p``.
"""

from typing import Literal

from torch import Tensor

GroupScale = Literal["group", "batch", "none"]


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of group_size={group_size}")
    return rewards.detach().view(-1, group_size)                        # [P, G]


def reinforce_advantages(rewards: Tensor, baseline: Tensor | float = 0.0) -> Tensor:
    """REINFORCE (Williams 1992): ``A = r - b`` with ``b`` a constant (none, batch mean or moving average)."""
    return (rewards - baseline).detach()                                # [B]


def remax_advantages(rewards: Tensor, greedy_rewards: Tensor, clip: float | None = None) -> Tensor:
    """ReMax (Li et al. 2023, eq. 5): ``A = r(x, y) - r(x, y_greedy)``.

    ``greedy_rewards`` holds one reward per prompt (``[P]``), shared by the prompt's ``G`` samples, so the
    baseline never depends on the sampled ``y``. ``clip`` bounds ``|A|`` as the official code does (5).
    """
    group_size = rewards.numel() // greedy_rewards.numel()
    adv = _groups(rewards, group_size) - greedy_rewards.detach()[:, None]   # [P, G]
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return adv.reshape(-1)                                              # [B]


def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """RLOO (Ahmadian et al. 2024; Off-Policy Finetuning for LLM Math Reasoning eq. 2): ``A_i = r_i - mean_{j != i}
    r_j``.

    Equals ``G / (G - 1) * (r_i - mean_j r_j)``; needs ``G >= 2``.
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs group_size >= 2 samples per prompt (got {group_size}): "
                         "the leave-one-out baseline of a single sample is undefined")
    r = _groups(rewards, group_size)                                    # [P, G]
    baseline = (r.sum(-1, keepdim=True) - r) / (group_size - 1)         # [P, G]
    return (r - baseline).reshape(-1)                                   # [B]


def grpo_advantages(rewards: Tensor, group_size: int, scale: GroupScale = "group", eps: float = 1e-4) -> Tensor:
    """GRPO (Shao et al. 2024, eq. 3): ``A_i = (r_i - mean_group) / (std + eps)``.

    ``scale``: ``group`` divides by the group's std, ``batch`` by the whole batch's std, ``none`` not at all
    (Dr. GRPO, Liu et al. 2025). std is Bessel-corrected. A group with equal rewards gets ``A = 0``.
    """
    if group_size < 2:
        raise ValueError(f"GRPO needs group_size >= 2 samples per prompt (got {group_size})")
    r = _groups(rewards, group_size)                                    # [P, G]
    centred = r - r.mean(-1, keepdim=True)                              # [P, G]
    if scale == "group":
        centred = centred / (r.std(-1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (r.std() + eps)
    elif scale != "none":
        raise ValueError(f"unknown GRPO scale {scale!r}; choose one of {GroupScale.__args__}")
    return centred.reshape(-1)                                          # [B]


def zero_std_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Boolean ``[P]``: groups whose rewards are all equal (no learning signal under group baselines)."""
    r = _groups(rewards, group_size)
    return (r == r[:, :1]).all(-1)


class LeaveOneOut:
    """RLOO's estimator as a value a module takes (``advantage_estimator``): :func:`rloo_advantages`, then
    ``|A|`` clipped to ``clip`` if set."""

    def __init__(self, clip: float | None = None) -> None:
        self.clip = clip

    def __call__(self, rewards: Tensor, group_size: int) -> Tensor:
        advantages = rloo_advantages(rewards, group_size)               # [B]
        return advantages if self.clip is None else advantages.clamp(-self.clip, self.clip)


class GroupNormalized:
    """GRPO's estimator as a value a module takes (``advantage_estimator``): :func:`grpo_advantages` with
    ``scale``, then ``|A|`` clipped to ``clip`` if set."""

    def __init__(self, scale: GroupScale = "group", clip: float | None = None) -> None:
        self.scale, self.clip = scale, clip

    def __call__(self, rewards: Tensor, group_size: int) -> Tensor:
        advantages = grpo_advantages(rewards, group_size, self.scale)   # [B]
        return advantages if self.clip is None else advantages.clamp(-self.clip, self.clip)
