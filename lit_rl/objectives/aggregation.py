"""Loss aggregation: one function, one setting shared by every objective (the modes of GRPO, DAPO and Dr. GRPO)."""

from typing import Literal

from torch import Tensor

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]


def aggregate(
    loss: Tensor,
    mask: Tensor,
    mode: Aggregation,
    *,
    num_seqs: int | None = None,
    num_tokens: float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Reduce a per-token loss to a scalar.

    - ``token_mean``: ``sum m L / sum m`` (DAPO / BNPO)
    - ``seq_mean_token_mean``: ``mean_i (sum_t m L / sum_t m)`` (GRPO paper)
    - ``seq_mean_token_sum``: ``mean_i sum_t m L`` (REINFORCE / ReMax)
    - ``seq_mean_token_sum_norm``: ``sum m L / (B * C)``, ``C = max_len`` a constant (Dr. GRPO)

    ``num_seqs`` and ``num_tokens`` are the *global* normalisers when ``loss`` is one micro-batch of a
    larger batch (gradient accumulation): summing the micro-batch results then equals the full-batch
    value, so 1x8 and 8x1 accumulation give the same gradient. They default to this batch's own.
    """
    loss = loss * mask                                                  # [B, T]
    num_seqs = loss.shape[0] if num_seqs is None else num_seqs
    if mode == "token_mean":
        num_tokens = mask.sum().clamp(min=1) if num_tokens is None else num_tokens
        return loss.sum() / num_tokens
    if mode == "seq_mean_token_mean":
        return (loss.sum(-1) / mask.sum(-1).clamp(min=1)).sum() / num_seqs
    if mode == "seq_mean_token_sum":
        return loss.sum() / num_seqs
    if mode == "seq_mean_token_sum_norm":
        if max_len is None:
            raise ValueError("aggregation 'seq_mean_token_sum_norm' needs max_len (the constant C, e.g. max_new_tokens)")
        return loss.sum() / (num_seqs * max_len)
    raise ValueError(f"unknown aggregation {mode!r}; choose one of {Aggregation.__args__}")
