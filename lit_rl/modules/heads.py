"""What some objectives need from the policy's forward beyond log-probs: the logits with gradient (an
entropy bonus) and the last hidden state (a value head). Both are read off the one forward the shared loop
already runs, through a forward hook, so no algorithm re-implements the policy's log-prob path."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lit_rl.policy import Policy, sequence_inputs


@contextmanager
def capture_output(module: nn.Module) -> Iterator[list[Any]]:
    """Collect ``module``'s forward outputs while the context is open."""
    outputs: list[Any] = []
    handle = module.register_forward_hook(lambda mod, args, out: outputs.append(out))
    try:
        yield outputs
    finally:
        handle.remove()


def _entropy(z: Tensor) -> Tensor:
    logp = torch.log_softmax(z.float(), dim=-1)                        # [n, V]
    return -(logp.exp() * logp).sum(-1)                                 # [n]


def entropy_with_grad(logits: Tensor, temperature: float = 1.0, chunk_rows: int = 4096) -> Tensor:
    """Differentiable per-position entropy of ``softmax(logits / temperature)``, ``[B, T, V] -> [B, T]``.
    Row chunks are checkpointed: the backward recomputes one chunk's softmax instead of keeping all."""
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

    def forward(self, hidden: Tensor, num_completion: int) -> Tensor:
        """``hidden [B, P+C, H]`` of a prompt + completion forward -> values ``[B, C]``."""
        return self.linear(hidden[:, -num_completion - 1:-1].float()).squeeze(-1)

    @staticmethod
    def decoder(policy: Policy) -> nn.Module:
        return policy.model.get_decoder()

    @torch.no_grad()
    def values(self, policy: Policy, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
               completion_mask: Tensor, temperature: float = 1.0) -> Tensor:
        """Values ``[B, C]`` of a batch without gradient (the signature of ``RLModule._rowwise``'s functions)."""
        ids, attention, positions = sequence_inputs(prompt_ids, prompt_mask, completion_ids, completion_mask)
        hidden = self.decoder(policy)(input_ids=ids, attention_mask=attention, position_ids=positions,
                                      use_cache=False).last_hidden_state
        return self(hidden, completion_ids.shape[1])
