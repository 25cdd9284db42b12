"""Per-token KL estimators (Schulman, "Approximating KL divergence", 2020)."""

from typing import Literal

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]


def kl_penalty(logps: Tensor, ref_logps: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi, with ``d = ref_logps - logps``.

    - k1 = ``-d``; k2 = ``d^2 / 2``; k3 = ``exp(d) - d - 1``.
    k1 and k3 are unbiased *values*; as a loss only k2's expected gradient is that of KL(pi||ref).
    ``d`` is clamped to +-20 before ``exp`` so one wild token cannot overflow.
    """
    d = (ref_logps - logps).clamp(-20.0, 20.0)                          # [B, T]
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d.square()
    if estimator == "k3":
        return torch.exp(d) - d - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {KLEstimator.__args__}")
