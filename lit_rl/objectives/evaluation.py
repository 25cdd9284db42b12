"""Evaluation estimators over ``n`` samples per problem, ``c`` of them correct (per problem: ``n``, ``c`` ``[P]``)."""

import torch
from torch import Tensor


def _counts(n: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``n`` and ``c`` in one floating dtype (float64 stays float64; integer counts take the default dtype)."""
    dtype = torch.promote_types(n.dtype, c.dtype)
    dtype = dtype if dtype.is_floating_point else torch.get_default_dtype()
    n, c = n.to(dtype), c.to(dtype)
    if n.shape != c.shape:
        raise ValueError(f"n and c hold one count per problem and must have one shape (got {tuple(n.shape)} and "
                         f"{tuple(c.shape)})")
    if ((c < 0) | (c > n)).any():
        raise ValueError("each problem's correct count c must be within [0, n]")
    return n, c


def pass_at_k(n: Tensor, c: Tensor, k: int) -> Tensor:
    """pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", eq. 1): the unbiased estimate,
    per problem, that at least one of ``k`` samples is correct, from ``n >= k`` samples of which ``c`` are correct::

        pass@k = 1 - C(n - c, k) / C(n, k)

    computed in their numerically stable form ``1 - prod_{i=n-c+1}^{n} (1 - k / i)`` (no binomial of large
    numbers), and 1 when ``n - c < k`` (every draw of ``k`` holds a correct sample). Average over problems for the
    benchmark's pass@k. With ``n == k`` it is 1 for a problem with any correct sample, 0 otherwise.

    Golden values, by hand: ``n=5, c=2, k=2``: ``1 - C(3, 2) / C(5, 2) = 1 - 3 / 10 = 0.7`` (stable form:
    ``1 - (1 - 2/4)(1 - 2/5) = 1 - 0.5 * 0.6 = 0.7``); ``c = 0``: 0; ``c = n``: 1; ``k = 1``: ``c / n``
    (``1 - (n - c) / n``).

    Args:
        n: samples per problem ``[P]``.
        c: correct samples per problem ``[P]``.
        k: the ``k`` of pass@k, ``1 <= k <= n`` for every problem.

    Returns:
        ``[P]`` pass@k per problem, in ``n``'s and ``c``'s floating dtype (the default dtype for integer counts).
    """
    n, c = _counts(n, c)                                                # [P], [P]
    if k < 1:
        raise ValueError(f"pass@k needs k >= 1 (got k={k})")
    if (n < k).any():
        raise ValueError(f"pass@k needs at least k samples per problem (got k={k} and as few as "
                         f"n={int(n.min())})")
    i = torch.arange(1, int(n.max()) + 1 if n.numel() else 1, dtype=n.dtype, device=n.device)   # [I]
    in_range = (i > (n - c)[:, None]) & (i <= n[:, None])               # [P, I]: i in n-c+1 .. n
    factors = torch.where(in_range, 1 - k / i, torch.ones((), dtype=n.dtype, device=n.device))   # [P, I]
    estimate = 1 - factors.prod(-1)                                     # [P]
    return torch.where(n - c < k, torch.ones_like(estimate), estimate)  # [P]


def mean_at_k(n: Tensor, c: Tensor) -> Tensor:
    """mean@k: the share of correct samples per problem, ``c / n`` ``[P]``; averaged over problems (all with the
    same ``n = k`` samples) it is the mean correctness over all samples.

    Golden values, by hand: ``n=4, c=1``: 0.25; ``c = 0``: 0; ``c = n``: 1. Same dtypes as :func:`pass_at_k`.
    """
    n, c = _counts(n, c)                                                # [P], [P]
    if (n < 1).any():
        raise ValueError("mean@k needs at least one sample per problem")
    return c / n                                                        # [P]
