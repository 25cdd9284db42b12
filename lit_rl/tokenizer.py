"""A character-level tokenizer built locally (no download), saved and loaded like any hub tokenizer."""

import re

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
    pattern = "|".join([*map(re.escape, longest_first), "."])
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, padding_side="left")
    tokenizer.chat_template = chat_template
    return tokenizer
