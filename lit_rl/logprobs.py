"""Per-token log-probs and entropy without materialising a float32 ``[B, T, V]`` log-softmax.

``log p(y_t) = z_{y_t} - logsumexp(z)`` with ``z = logits / temperature``, computed over row chunks of the
flattened ``[B*T, V]`` logits. Under autograd each chunk is checkpointed, so backward keeps only the
logits themselves (which the model produced anyway), not a float copy per chunk.
"""

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _chunk_logps(logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
    z = logits.float() / temperature                                    # [n, V]
    return z.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)   # [n]


def _chunk_entropy(logits: Tensor, temperature: float) -> Tensor:
    z = logits.float() / temperature                                    # [n, V]
    logp = z - torch.logsumexp(z, dim=-1, keepdim=True)                 # [n, V]
    return -(logp.exp() * logp).sum(-1)                                 # [n]


def token_logps(logits: Tensor, labels: Tensor, temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """``log softmax(logits / temperature)`` at ``labels``. ``logits [B, T, V]``, ``labels [B, T]`` -> ``[B, T]``."""
    flat, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    out = []
    for start in range(0, flat.shape[0], chunk_size):
        rows, rows_labels = flat[start:start + chunk_size], flat_labels[start:start + chunk_size]
        if rows.requires_grad:
            out.append(checkpoint(_chunk_logps, rows, rows_labels, temperature, use_reentrant=False))
        else:
            out.append(_chunk_logps(rows, rows_labels, temperature))
    return torch.cat(out).view(labels.shape)


@torch.no_grad()
def token_entropy(logits: Tensor, temperature: float = 1.0, chunk_size: int = 1024) -> Tensor:
    """Entropy of ``softmax(logits / temperature)`` per position, ``[B, T, V]`` -> ``[B, T]`` (no gradient)."""
    flat = logits.reshape(-1, logits.shape[-1])
    parts = [_chunk_entropy(flat[s:s + chunk_size], temperature) for s in range(0, flat.shape[0], chunk_size)]
    return torch.cat(parts).view(logits.shape[:-1])
