"""Rollout throughput: HF ``generate`` (lit-rl's ``HFEngine``) against vLLM (``VLLMEngine``) on the same model
and batch, CPU.

    python benchmarks/rollout.py [--prompts 16] [--group 4] [--length 128] [--repeats 3]

The ~12M-parameter Qwen2-style model of benchmarks/common.py (float32), ``prompts`` prompts of 16 tokens,
``group`` samples each at temperature 1, exactly ``length`` new tokens per sample (EOS ignored on both sides,
so both produce the same number of tokens). Each engine runs in its own process; one warm-up call, then the
best of ``repeats`` timed calls. Prints tokens/s of each and vLLM's as a multiple of HF's.
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


def child(which: str, path: str, args) -> None:
    import torch

    from lit_rl.policy import Policy
    from lit_rl.rollout import HFEngine

    policy = Policy.load(path)
    ids, mask = policy.encode_prompts(prompts(args.prompts, 16), args.length)
    if which == "vllm":
        from vllm import SamplingParams

        from lit_rl.vllm_engine import VLLMEngine

        engine = VLLMEngine(gpu_memory_utilization=0.2, max_model_len=512, return_logps=False)
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
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["hf", "vllm"])
    parser.add_argument("--model")
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.model, args)
    path = str(build_model(tempfile.mkdtemp()))
    print(f"model {num_parameters(path) / 1e6:.1f}M parameters; {args.prompts} prompts x {args.group} samples x "
          f"{args.length} tokens per call", flush=True)
    flags = [f"--{k}={getattr(args, k)}" for k in ("prompts", "group", "length", "repeats")]
    rates = {}
    for which in ("hf", "vllm"):
        env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1"}
        out = subprocess.run([sys.executable, __file__, "--child", which, "--model", path, *flags], cwd=ROOT, env=env,
                             capture_output=True, text=True)
        line = [row for row in out.stdout.splitlines() if row.startswith("RESULT")]
        if out.returncode != 0 or not line:
            raise SystemExit(f"{which} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        rates[which] = float(line[0].split()[1])
        print(f"{which:5s} {rates[which]:.0f} tokens/s", flush=True)
    print(f"vLLM / HF generate tokens/s: {rates['vllm'] / rates['hf']:.2f}x")


if __name__ == "__main__":
    main()
