"""A small Qwen2-style causal LM and a word-level tokenizer, built locally for the benchmarks (no download).

Qwen2's block is Llama's with biased q/k/v projections; it is built as ``LlamaForCausalLM`` with
``attention_bias=True`` (which also biases o_proj) because transformers' ``AutoTokenizer`` swaps a ``qwen2``
model's saved tokenizer for Qwen's byte-level one. Grouped-query attention (2 KV heads), SwiGLU, RMSNorm, RoPE
and tied embeddings as in Qwen2.5-0.5B, at 1/10 of its width.
"""

import os
import threading
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

WORDS = [f"w{i}" for i in range(32000 - 2)]


def build_model(out_dir: str | Path, vocab: int = 32000, hidden: int = 256, layers: int = 4, seed: int = 0) -> Path:
    vocab_map = {"<pad>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS[:vocab - 2])}}
    tok = Tokenizer(models.WordLevel(vocab=vocab_map, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")                       # joins tokens with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", padding_side="left")
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=hidden // 64, num_key_value_heads=2, head_dim=64, attention_bias=True,
                         max_position_embeddings=1024, tie_word_embeddings=True, rms_norm_eps=1e-6,
                         bos_token_id=1, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def prompts(n: int, length: int, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(0, 1000, (length,), generator=g).tolist()) for _ in range(n)]


def num_parameters(path: str | Path) -> int:
    return sum(p.numel() for p in LlamaForCausalLM.from_pretrained(path).parameters())


def resident_bytes() -> int:
    """The process's resident set now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class ResidentPeak(threading.Thread):
    """The resident set every ``period`` seconds, its peak kept per ``phase`` (set it from the measured code).
    ``ru_maxrss`` cannot do this: it only ever rises, so a peak after a warm-up step hides under the warm-up's.
    Large tensors are ``mmap``ed by the allocator and returned on free, so the resident set follows them."""

    def __init__(self, phase: str = "other", period: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.period, self.phase, self.peaks = period, phase, {phase: resident_bytes()}
        self.start()

    def run(self) -> None:
        while True:
            now = resident_bytes()
            if now > self.peaks.get(self.phase, 0):
                self.peaks[self.phase] = now
            time.sleep(self.period)
