"""A character-level tokenizer built locally (no download), saved and loaded like any hub tokenizer."""

import re

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, EOS = "<pad>", "<eos>"


def char_tokenizer(alphabet: str, words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """One token per character of ``alphabet``, plus whole-word tokens for ``words`` (e.g. ``<answer>``)."""
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys([PAD, EOS, *words, *alphabet]))}
    longest_first = sorted(words, key=len, reverse=True)
    pattern = "|".join([*map(re.escape, longest_first), "."])
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, padding_side="left")
