"""Rollout throughput: HF ``generate`` (lit-rl's ``HFEngine``) against vLLM (``VLLMEngine``) on the same model
and batch, CPU.

    python benchmarks/rollout.py [--models 12m builtin:countdown-sft] [--prefix-caching both]
                                 [--prompts 16] [--group 4] [--length 128] [--repeats 3]

``12m`` is the ~12M-parameter Llama-style model of benchmarks/common.py (prompts of 16 words); any other name is
a model lit-rl loads (``builtin:countdown-sft``: the built-in 664K-parameter model, on Countdown prompts of the
shipped file). Float32, ``prompts`` prompts, ``group`` samples each at temperature 1, exactly ``length`` new
tokens per sample (EOS ignored on both sides, so both produce the same number of tokens). vLLM runs with its
prefix cache on, off, or both (the ``group`` samples of a prompt share its prefix). Each engine and setting runs
in its own process; one warm-up call, then the best of ``repeats`` timed calls. Prints tokens/s of each and
vLLM's as a multiple of HF's on the same model.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import build_model, num_parameters, prompts  # noqa: E402


def countdown_prompts(n: int) -> list[str]:
    from lit_rl.rows import read_rows

    return [row["prompt"] for _, row in read_rows("builtin:countdown-prompts.jsonl")[:n]]


def child(which: str, path: str, args) -> None:
    import torch

    from lit_rl.policy import Policy
    from lit_rl.rollout import HFEngine

    policy = Policy.load(path)
    texts = prompts(args.prompts, 16) if args.prompt_source == "words" else countdown_prompts(args.prompts)
    ids, mask = policy.encode_prompts(texts, args.length)
    if which == "vllm":
        from vllm import SamplingParams

        from lit_rl.vllm_engine import VLLMEngine

        engine = VLLMEngine(gpu_memory_utilization=0.2, max_model_len=ids.shape[1] + args.length, return_logps=False,
                            llm_kwargs={"enable_prefix_caching": args.prefix_caching == "on"})
        engine.bind(policy.model, policy.tokenizer)

        def generate():
            from vllm.inputs import TokensPrompt

            params = SamplingParams(n=args.group, temperature=1.0, max_tokens=args.length, ignore_eos=True,
                                    detokenize=False)
            outs = engine.llm.generate([TokensPrompt(prompt_token_ids=r[m.bool()].tolist()) for r, m in zip(ids, mask)],
                                       params, use_tqdm=False)
            return sum(len(c.token_ids) for o in outs for c in o.outputs)

        engine._start()
    else:
        engine = HFEngine()
        engine.bind(policy.model, policy.tokenizer)

        def generate():
            from transformers import GenerationConfig

            config = GenerationConfig(max_new_tokens=args.length, min_new_tokens=args.length, do_sample=True,
                                      temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0, eos_token_id=1)
            with torch.no_grad():
                out = policy.model.generate(input_ids=ids.repeat_interleave(args.group, 0),
                                            attention_mask=mask.repeat_interleave(args.group, 0), generation_config=config)
            return (out.shape[1] - ids.shape[1]) * out.shape[0]

    generate()                                                          # warm-up
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        tokens = generate()
        best = min(best, time.perf_counter() - start)
    if tokens != args.prompts * args.group * args.length:
        raise RuntimeError(f"{which} generated {tokens} tokens, expected {args.prompts * args.group * args.length}")
    print(f"RESULT {tokens / best}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["12m"], help="12m, or a model lit-rl loads")
    parser.add_argument("--prefix-caching", choices=["on", "off", "both"], default="both")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["hf", "vllm"])
    parser.add_argument("--model")
    parser.add_argument("--prompt-source", choices=["words", "countdown"], default="words")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.model, args)
    from lit_rl.policy import resolve

    caching = ["on", "off"] if args.prefix_caching == "both" else [args.prefix_caching]
    print(f"{args.prompts} prompts x {args.group} samples x {args.length} tokens per call, best of {args.repeats}")
    for name in args.models:
        path = str(build_model(tempfile.mkdtemp())) if name == "12m" else resolve(name)
        source = "words" if name == "12m" else "countdown"
        print(f"{name}: {num_parameters(path) / 1e6:.2f}M parameters", flush=True)
        rates = {}
        for which, cache in [("hf", "off"), *[("vllm", c) for c in caching]]:
            flags = [f"--{k}={getattr(args, k)}" for k in ("prompts", "group", "length", "repeats")]
            flags += [f"--prefix-caching={cache}", f"--prompt-source={source}"]
            env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1"}
            out = subprocess.run([sys.executable, __file__, "--child", which, "--model", path, *flags], cwd=ROOT,
                                 env=env, capture_output=True, text=True)
            line = [row for row in out.stdout.splitlines() if row.startswith("RESULT")]
            if out.returncode != 0 or not line:
                raise SystemExit(f"{which} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            label = "hf" if which == "hf" else f"vllm, prefix cache {cache}"
            rates[label] = float(line[0].split()[1])
            ratio = "" if which == "hf" else f" ({rates[label] / rates['hf']:.2f}x HF)"
            print(f"  {label:24s} {rates[label]:.0f} tokens/s{ratio}", flush=True)


if __name__ == "__main__":
    main()
