"""Small Llama-style causal LMs built locally from a config, saved with ``save_pretrained`` and so loaded
back through the same ``from_pretrained`` path a hub model takes. Tests use them; so does the built-in
Countdown model. ``python -m lit_rl.tiny OUT_DIR`` writes the Countdown one.

Why Llama and not Qwen2: for ``model_type: qwen2`` transformers 5's ``AutoTokenizer`` builds
``Qwen2Tokenizer``, which replaces the saved character-level pre-tokenizer with Qwen's byte-level one (and
drops ``<``, ``>`` and spaces); for ``llama`` it loads ``tokenizer.json`` as saved."""

import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lit_rl.tasks.countdown import ALPHABET, WORDS
from lit_rl.tokenizer import PLAIN_TEMPLATE, char_tokenizer

# A vocabulary and chat template for tests of chat models on other tasks (GSM8K-style text, role markers).
CHAT_ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n"
CHAT_WORDS = ("<|system|>", "<|user|>", "<|assistant|>", "<think>", "</think>", "<answer>", "</answer>")
CHAT_TEMPLATE = ("{%- for m in messages -%}{{ '<|' + m['role'] + '|>' + m['content'] }}{%- if not loop.last or "
                 "m['role'] != 'assistant' %}{{ '\\n' }}{% endif -%}{%- endfor -%}"
                 "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}")


def build_tiny_model(out_dir: str | Path, hidden_size: int = 128, num_layers: int = 4, head_dim: int = 32,
                     max_positions: int = 256, seed: int = 0, alphabet: str = ALPHABET, words: tuple[str, ...] = WORDS,
                     chat_template: str | None = PLAIN_TEMPLATE) -> Path:
    """A randomly initialised model over a character vocabulary (by default Countdown's, with its plain chat
    template). ``head_dim >= 32`` keeps it servable by vLLM's CPU backend."""
    tokenizer = char_tokenizer(alphabet, words, chat_template)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=hidden_size // head_dim, num_key_value_heads=hidden_size // head_dim,
        head_dim=head_dim, max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    probe = "Using the numbers [1, 2], create an equation that equals 3.\n<answer>(1 + 2)</answer>"
    loaded = AutoTokenizer.from_pretrained(out)
    if loaded.decode(loaded(probe, add_special_tokens=False)["input_ids"]) != probe:
        raise RuntimeError(f"{type(loaded).__name__} loaded from {out} does not round-trip text")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_tiny_model(args.out_dir, args.hidden_size, args.num_layers, seed=args.seed))
