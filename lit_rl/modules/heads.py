"""What some objectives add on top of the policy's forward (:class:`~lit_rl.policy.PolicyOutput`): a value
head on its last hidden state, and a differentiable entropy of logits (for a loss that materialises them; the
forward's own ``entropy`` already carries its gradient and needs no logits)."""

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lit_rl.policy import Policy, PolicyOutput


def _entropy(z: Tensor) -> Tensor:
    logp = torch.log_softmax(z.float(), dim=-1)                        # [n, V]
    return -(logp.exp() * logp).sum(-1)                                 # [n]


def entropy_with_grad(logits: Tensor, temperature: float = 1.0, chunk_rows: int = 4096) -> Tensor:
    """Differentiable per-position entropy of ``softmax(logits / temperature)``, ``[B, T, V] -> [B, T]``.
    Row chunks are checkpointed: the backward recomputes one chunk's softmax instead of keeping all.

    An entropy bonus on the policy's forward needs none of this: its ``output.entropy`` (``entropy=True``) is the
    same entropy with its gradient, computed from the hidden states in chunks without ``[B, C, V]`` logits."""
    if logits is None:
        raise ValueError("no logits to take the entropy of: the policy's forward computes log-probs and entropy "
                         "from the hidden states and keeps no [B, C, V] logits. output.entropy is this entropy, "
                         "with its gradient; a module or loss that needs the logits themselves sets "
                         "needs_logits = True")
    flat = logits.reshape(-1, logits.shape[-1]) / temperature           # [N, V]
    parts = [checkpoint(_entropy, flat[s:s + chunk_rows], use_reentrant=False)
             for s in range(0, flat.shape[0], chunk_rows)]
    return torch.cat(parts).view(logits.shape[:-1])                     # [B, T]


class ValueHead(nn.Module):
    """A linear critic on the policy's last hidden state: ``V(s_t)`` is read at the position that predicts
    token ``t``, like the logits. Zero-initialised, so the first advantages are the plain returns."""

    def __init__(self, policy: Policy) -> None:
        super().__init__()
        self.linear = nn.Linear(policy.model.config.hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, output: PolicyOutput) -> Tensor:
        """Values ``[B, C]`` of a forward that returned its hidden state (``hidden=True``)."""
        if output.hidden is None:
            raise ValueError("the value head reads the forward's last hidden state: call the policy with hidden=True")
        hidden = output.hidden.to(self.linear.weight.dtype)
        with torch.autocast(hidden.device.type, enabled=False):         # values and GAE in the head's dtype
            return self.linear(hidden).squeeze(-1).float()              # [B, C]

    @torch.no_grad()
    def values(self, policy: Policy, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
               completion_mask: Tensor, temperature: float = 1.0) -> Tensor:
        """Values ``[B, C]`` of a batch without gradient (the signature of ``RLModule._rowwise``'s functions)."""
        return self(policy(prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, hidden=True))
