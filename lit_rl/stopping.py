"""Where a completion ends: at its first end-of-sequence token, or right after the first stop string it completes.

Both rollout engines stop early in their own way (HF ``stop_strings``, vLLM ``stop``), which only saves time;
the completion the trainer learns from is then cut by :func:`stop_mask`, the same pure function for both, so HF
and vLLM give the same mask for the same tokens. The stop string itself stays in the completion (a reward may
need its ``</answer>``); everything after it is masked out and padded.

A stop string ends inside a token, and that token may run past it (``"</answer>\\n"`` in one token): the mask
keeps the whole token, so decoded text must be cut again with :func:`cut_after_stop` before a reward sees it.
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The tokenizer's EOS and every EOS of the model's generation config (an int or a list), each once."""
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    config_eos = [config_eos] if isinstance(config_eos, int) else list(config_eos or [])
    ids = [i for i in [tokenizer.eos_token_id, *config_eos] if i is not None]
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config names an EOS token")
    return list(dict.fromkeys(ids))


def completion_mask(completion_ids: Tensor, eos_token_ids: list[int]) -> Tensor:
    """1 on tokens up to and including the first EOS, 0 after it."""
    is_eos = torch.isin(completion_ids, torch.tensor(eos_token_ids, device=completion_ids.device)).long()
    return ((is_eos.cumsum(-1) - is_eos) == 0).long()                   # [B, C]


def stop_length(ids: list[int], stop: Sequence[str], decode: Callable[[list[int]], str]) -> int | None:
    """The fewest leading tokens of ``ids`` whose decoding contains a stop string (None if all of them do not).

    Once a prefix contains a stop string every longer one does, so a binary search over the prefix length finds
    the token that completes the first stop string in ``log2(len(ids)) + 1`` decodes."""
    def found(k: int) -> bool:
        text = decode(ids[:k])
        return any(s in text for s in stop)

    if not stop or not found(len(ids)):
        return None
    lo, hi = 1, len(ids)                                                # found(hi); the empty prefix holds nothing
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if found(mid) else (mid + 1, hi)
    return lo


def stop_mask(completion_ids: Tensor, eos_token_ids: list[int], stop: Sequence[str] = (),
              decode: Callable[[list[int]], str] | None = None) -> Tensor:
    """1 on the tokens up to and including the first EOS or the token that completes the first stop string
    (as ``decode`` renders the tokens), whichever comes first; 0 after it. ``decode`` is needed with ``stop``."""
    mask = completion_mask(completion_ids, eos_token_ids)               # [B, C]
    if not stop:
        return mask
    for row, (ids, length) in enumerate(zip(completion_ids.tolist(), mask.sum(-1).tolist())):
        end = stop_length(ids[:length], stop, decode)
        if end is not None:
            mask[row, end:] = 0
    return mask


def cut_after_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to and including the first stop string to end in it (all of it if none occurs).

    Apply it to decoded completions before they are scored: the token that completes a stop string may carry
    text past it, and that text must never reach a reward."""
    ends = [text.find(s) + len(s) for s in stop if s in text]
    return text[:min(ends)] if ends else text


def decoder(tokenizer: Any) -> Callable[[list[int]], str]:
    """Token ids to text as the engines' early stopping sees it: special tokens kept, no clean-up."""
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
