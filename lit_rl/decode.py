"""Sampling from a Hugging Face causal LM by lit-rl's own loop over the model's key/value cache.

``transformers``' ``generate`` is general: logits processors and stopping criteria are objects called every step,
and with ``num_return_sequences = n`` each prompt is prefilled ``n`` times. On a small model that Python is most of
a step's generation time. :func:`sample` does the same work plainly: one prefill per prompt, its cache repeated
for the prompt's ``n`` samples into buffers that hold the whole completion (:class:`ReservedLayer`: a step writes
one position where ``DynamicCache`` copies the whole cache), then one forward per new token with the temperature,
top-k and top-p filters of ``generate`` applied in its order (temperature, top-k, top-p) as tensor operations, one
``torch.multinomial`` over the rows as ``generate`` draws, rows that reached an EOS padded, and the loop left as
soon as every row has ended (stop strings are checked every few steps).
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers.cache_utils import DynamicLayer

from lit_rl.stopping import stop_length

STOP_CHECK_EVERY = 8                                                    # steps between stop-string checks


def filter_logits(logits: Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """``logits / temperature`` ``[R, V]`` float32 with what top-k and then top-p (nucleus) sampling exclude set to
    ``-inf``, as ``generate``'s ``TopKLogitsWarper`` and ``TopPLogitsWarper`` do: top-p keeps the smallest set of
    tokens, highest first, whose probability reaches ``top_p``, and always the most likely token."""
    z = logits.float() / temperature                                    # [R, V]
    if 0 < top_k < z.shape[-1]:
        kth = z.topk(top_k, dim=-1).values[:, -1:]                      # [R, 1]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        ascending, order = z.sort(dim=-1)                               # [R, V]
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - top_p            # the tail whose mass is within 1 - p
        drop[:, -1] = False
        z = z.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return z


@torch.no_grad()
def sample(model: nn.Module, prompt_ids: Tensor, prompt_mask: Tensor, n: int, max_new_tokens: int,
           temperature: float, top_k: int, top_p: float, eos_token_ids: list[int], pad_token_id: int,
           stop: Sequence[str] = (), decode: Callable[[list[int]], str] | None = None,
           return_logps: bool = False) -> tuple[Tensor, Tensor | None]:
    """``n`` completions of each left-padded prompt, prompt-major (row ``p * n + i``): token ids ``[B*n, C]``
    (``pad_token_id`` after a row's EOS; not yet cut at stop strings: :func:`lit_rl.stopping.stop_mask` does
    that) and, with ``return_logps``, each sampled token's log-prob under ``softmax(logits / temperature)``
    before top-k/top-p (the policy's own distribution, as ``HFEngine`` returns it). ``temperature = 0`` is greedy.
    The model is run as it is (its caller puts it in eval mode)."""
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)               # [B, P]
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    cache, rows = out.past_key_values, torch.arange(len(prompt_ids), device=prompt_ids.device).repeat_interleave(n)
    repeat_into_reserved(cache, n, max_new_tokens)                      # one prefill per prompt for its n samples
    logits, mask = out.logits[:, -1][rows], prompt_mask[rows]           # [B*n, V], [B*n, P]
    position = positions[rows, -1:] + 1                                 # [B*n, 1]
    eos = torch.tensor(eos_token_ids, device=prompt_ids.device)
    ended = torch.zeros(len(rows), dtype=torch.bool, device=prompt_ids.device)
    tokens, logps = [], []
    for step in range(max_new_tokens):
        if temperature == 0:
            token = logits.argmax(-1)                                   # [B*n]
        else:
            z = filter_logits(logits, temperature, top_k, top_p)
            token = torch.multinomial(z.softmax(-1), 1).squeeze(-1)     # [B*n]
        if return_logps:
            scaled = logits.float() / (temperature or 1.0)
            logps.append(scaled.log_softmax(-1).gather(-1, token[:, None]).squeeze(-1))
        token = token.masked_fill(ended, pad_token_id)
        tokens.append(token)
        ended |= torch.isin(token, eos)
        if stop and (step + 1) % STOP_CHECK_EVERY == 0:
            ended |= stopped(torch.stack(tokens, 1), ended, stop, decode)
        if bool(ended.all()) or step + 1 == max_new_tokens:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)       # [B*n, P+t+1]
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position, past_key_values=cache,
                    use_cache=True)
        logits, position = out.logits[:, -1], position + 1
    return torch.stack(tokens, 1), torch.stack(logps, 1) if return_logps else None


class ReservedLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views into buffers reserved for ``reserve`` more positions:
    a decode step writes its position in place where ``DynamicLayer.update`` concatenates (a copy of the whole
    cache per step, quadratic in the completion's length; 29% of a decode step on the built-in model). Built from
    a prefilled layer, each row repeated ``n`` times; past the reserve it concatenates as ``DynamicLayer`` does."""

    def __init__(self, layer: DynamicLayer, n: int, reserve: int) -> None:
        super().__init__()
        self.lazy_initialization(layer.keys, layer.values)
        b, heads, length, _ = layer.keys.shape
        self.buffers = tuple(t.new_empty(b * n, heads, length + reserve, t.shape[-1]) for t in (layer.keys, layer.values))
        for buffer, t in zip(self.buffers, (layer.keys, layer.values)):
            buffer[:, :, :length].view(b, n, *t.shape[1:]).copy_(t[:, None])
        self.keys, self.values = (buffer[:, :, :length] for buffer in self.buffers)

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if self.keys.data_ptr() != self.buffers[0].data_ptr() or end > self.buffers[0].shape[-2]:
            return super().update(key_states, value_states, *args, **kwargs)
        for buffer, t in zip(self.buffers, (key_states, value_states)):
            buffer[:, :, start:end] = t
        self.keys, self.values = (buffer[:, :, :end] for buffer in self.buffers)
        return self.keys, self.values


def repeat_into_reserved(cache: Any, n: int, reserve: int) -> None:
    """Repeat each row of a prefilled cache ``n`` times (``batch_repeat_interleave``), plain full-attention layers
    into :class:`ReservedLayer` buffers with room for ``reserve`` more positions; other layer kinds (sliding
    window, linear attention) are repeated as they are."""
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized:
            cache.layers[i] = ReservedLayer(layer, n, reserve)
        else:
            layer.batch_repeat_interleave(n)


def stopped(tokens: Tensor, ended: Tensor, stop: Sequence[str], decode: Callable[[list[int]], str]) -> Tensor:
    """Which rows ``[R]`` not yet ended have completed a stop string in ``tokens [R, t]``."""
    found = torch.zeros_like(ended)
    for row in (~ended).nonzero().flatten().tolist():
        found[row] = stop_length(tokens[row].tolist(), stop, decode) is not None
    return found
