"""A character-level tokenizer built locally (no download), saved and loaded like any hub tokenizer."""

import re
import warnings
import weakref
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS = "<pad>", "<eos>"
# The built-in models' chat template: a system message and a newline, then the other messages' contents as they
# are, and no generation prompt. A plain-text prompt renders as itself, so the Countdown models see the same
# tokens with or without it, and chat prompts reach them through the same path a hub Instruct model takes.
PLAIN_TEMPLATE = ("{%- for m in messages -%}{{ m['content'] }}{%- if m['role'] == 'system' %}{{ '\\n' }}{% endif -%}"
                  "{%- endfor -%}")


def char_tokenizer(alphabet: str, words: tuple[str, ...] = (),
                   chat_template: str | None = PLAIN_TEMPLATE) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet``, plus whole-word tokens for ``words`` (e.g. ``<answer>``), with
    ``chat_template`` (``None``: none)."""
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([PAD, EOS, *words, *alphabet]))}
    longest_first = sorted(words, key=len, reverse=True)
    pattern = "|".join([*map(re.escape, longest_first), r"[\s\S]"])      # any character, newlines too
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, padding_side="left")
    tokenizer.chat_template = chat_template
    return tokenizer


_reported: "weakref.WeakKeyDictionary[Any, set[str]]" = weakref.WeakKeyDictionary()   # per tokenizer: warned pieces


def unknown_token_id(tokenizer: Any) -> int | None:
    """The id the tokenizer gives text it has no token for (its model's unk token: the built-in character
    tokenizers map unknown characters to ``<pad>``); ``None`` for tokenizers that cover every byte."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    unk = getattr(getattr(backend, "model", None), "unk_token", None)
    return None if unk is None else tokenizer.convert_tokens_to_ids(unk)


def token_ids(tokenizer: Any, text: str) -> list[int]:
    """``text``'s token ids (no special tokens added); text the vocabulary cannot spell is warned about once per
    tokenizer and character, naming the characters, rather than trained on silently as the unknown token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    unk = unknown_token_id(tokenizer)
    if unk is None or unk not in ids:
        return ids
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    token = tokenizer.convert_ids_to_tokens(unk)
    pieces = {text[a:b] for (a, b), i in zip(offsets, ids) if i == unk and text[a:b] != token}
    new = sorted(pieces - _reported.setdefault(tokenizer, set()))
    if new:
        _reported[tokenizer].update(new)
        warnings.warn(f"the tokenizer has no token for {new} (e.g. in {text[:80]!r}) and reads each as {token!r}; "
                      f"the model sees {token!r} there (use text its vocabulary covers, or another tokenizer)",
                      stacklevel=2)
    return ids
