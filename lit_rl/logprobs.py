"""Per-token log-probs and entropy without materialising a float32 ``[B, T, V]`` log-softmax.

``log p(y_t) = z_{y_t} - logsumexp(z)`` with ``z = logits / temperature``, computed over row chunks of the
flattened ``[N, V]`` logits. The forward saves only the logits (which exist anyway) and one logsumexp per row;
the backward writes ``(onehot(y) - softmax(z)) * grad / temperature`` chunk by chunk into a single gradient
buffer. Peak extra memory is that gradient (which the model's backward needs regardless) plus one chunk.
"""

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

CHUNK_ELEMENTS = 1 << 20                                                # 4 MiB of float32 per chunk


def _chunks(num_rows: int, vocab: int, chunk_size: int | None):
    step = chunk_size or max(1, CHUNK_ELEMENTS // vocab)
    return (slice(s, s + step) for s in range(0, num_rows, step))


class _TokenLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, temperature: float, chunk_size: int | None) -> Tensor:
        flat, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        logps = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)     # [N]
        lse = torch.empty_like(logps)                                                       # [N]
        for rows in _chunks(flat.shape[0], flat.shape[1], chunk_size):
            z = flat[rows].float() / temperature                                            # [n, V]
            lse[rows] = torch.logsumexp(z, dim=-1)
            logps[rows] = z.gather(-1, flat_labels[rows, None]).squeeze(-1) - lse[rows]
        ctx.save_for_backward(logits, labels, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return logps.view(labels.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logps: Tensor):
        logits, labels, lse = ctx.saved_tensors
        flat, flat_labels, g = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), grad_logps.reshape(-1).float()
        grad = torch.empty_like(flat)                                                       # [N, V]
        for rows in _chunks(flat.shape[0], flat.shape[1], ctx.chunk_size):
            p = (flat[rows].float() / ctx.temperature).sub_(lse[rows, None]).exp_()         # softmax [n, V]
            p.mul_(-g[rows, None]).scatter_add_(-1, flat_labels[rows, None], g[rows, None])  # (onehot - p) g
            grad[rows] = p.div_(ctx.temperature)
        return grad.view_as(logits), None, None, None


def token_logps(logits: Tensor, labels: Tensor, temperature: float = 1.0, chunk_size: int | None = None) -> Tensor:
    """``log softmax(logits / temperature)`` at ``labels``: ``logits [B, T, V]``, ``labels [B, T]`` -> ``[B, T]``
    float32. ``chunk_size`` rows per chunk (default: about 4M logits per chunk)."""
    return _TokenLogps.apply(logits, labels, temperature, chunk_size)


@torch.no_grad()
def token_entropy(logits: Tensor, temperature: float = 1.0, chunk_size: int | None = None) -> Tensor:
    """Entropy of ``softmax(logits / temperature)`` per position, ``[B, T, V]`` -> ``[B, T]`` (no gradient)."""
    flat = logits.reshape(-1, logits.shape[-1])
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for rows in _chunks(flat.shape[0], flat.shape[1], chunk_size):
        logp = torch.log_softmax(flat[rows].float() / temperature, dim=-1)                  # [n, V]
        out[rows] = -(logp.exp() * logp).sum(-1)
    return out.view(logits.shape[:-1])
