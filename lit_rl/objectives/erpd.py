"""ERPD stage 2 (Chen et al. 2026, erpd-extreme-region-policy-distillation.txt sec. 3.3-3.4, 4.5): the fixed
token signal distilled into ``pi_old``, and the quantities the paper reads off a run."""

from typing import Literal

import torch
from torch import Tensor

Outliers = Literal["keep", "min", "max"]


def mask_outliers(signal: Tensor, mode: Outliers = "keep", rows: Tensor | None = None) -> Tensor:
    """ERPD Table 12: keep only ``min(0, s)`` (the negative log-ratios, the "outliers" of positive samples) or
    ``max(0, s)`` on the rows selected by ``rows [B]`` (bool; ``None``: all rows). ``[B, T] -> [B, T]``."""
    if mode == "keep":
        return signal
    if mode == "min":
        masked = signal.clamp(max=0.0)
    elif mode == "max":
        masked = signal.clamp(min=0.0)
    else:
        raise ValueError(f"unknown outliers mode {mode!r}; choose 'keep', 'min' or 'max'")
    return masked if rows is None else torch.where(rows[:, None], masked, signal)  # [B, T]


def whiten(values: Tensor, mask: Tensor, eps: float = 1e-8) -> Tensor:
    """``(v - mean) / (std + eps)`` with mean and (population) std over all valid tokens of the batch; zero on
    padding. ``[B, T] -> [B, T]``."""
    m = mask.to(values.dtype)
    count = m.sum().clamp(min=1)
    mean = (values * m).sum() / count
    std = (((values - mean) * m).square().sum() / count).sqrt()
    return (values - mean) / (std + eps) * m                            # [B, T]


def distillation_signal(teacher_logps: Tensor, den_logps: Tensor, mask: Tensor, outliers: Outliers = "keep",
                        rows: Tensor | None = None) -> Tensor:
    """The fixed token signal of stage 2 (sec. 3.3, 3.4): ``A^ = log pi_e - log pi_den``, outliers masked
    (optional), then whitened over the valid tokens. ``pi_den`` is ``pi_old`` (strategy 1), the unlearned
    ``pi_un`` (strategy 2) or an earlier student (strategy 3). ``[B, T] -> [B, T]``, detached."""
    signal = ((teacher_logps - den_logps) * mask).detach()              # [B, T]
    return whiten(mask_outliers(signal, outliers, rows) * mask, mask)  # [B, T]


def combine_signals(signals: list[Tensor], weights: list[float], mask: Tensor) -> Tensor:
    """Simultaneous teacher ensemble (sec. 4.5, Table 8): the weighted sum of whitened signals, whitened again
    so the combined signal has the scale of a single one. ``K x [B, T] -> [B, T]``."""
    if len(signals) != len(weights) or not signals:
        raise ValueError(f"need one weight per signal (got {len(signals)} signals, {len(weights)} weights)")
    total = sum(w * s for w, s in zip(weights, signals))                # [B, T]
    return whiten(total, mask)


def deviation_ratio(student_logps: Tensor, old_logps: Tensor, teacher_logps: Tensor, mask: Tensor) -> Tensor:
    """ERPD Fig. 7's ratio ``|l_student - l_old| / |l_teacher - l_old|``, each side averaged over the same valid
    tokens (so the ratio of token sums): 0 = the student did not move, 1 = it moved as far as the teacher."""
    m = mask.to(student_logps.dtype)
    return ((student_logps - old_logps).abs() * m).sum() / ((teacher_logps - old_logps).abs() * m).sum().clamp(min=1e-12)


def sample_kl(logps: Tensor, base_logps: Tensor, mask: Tensor) -> Tensor:
    """ERPD sec. 4.1's KL estimate: ``KL[pi || pi_base] ~ mean over tokens of (l - l_base)`` on samples drawn from
    the current policy ``pi`` (k1 on its own samples). ``[B, T] -> []``."""
    m = mask.to(logps.dtype)
    return ((logps - base_logps) * m).sum() / m.sum().clamp(min=1)
