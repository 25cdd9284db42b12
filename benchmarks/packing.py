"""Packed sequences against padded ones: time and peak extra memory of one training forward and backward
(log-probs and entropy, as the RL modules' loss reads them), side by side, each side in a fresh process.

    python benchmarks/packing.py [--rows 64] [--repeats 3]
    python benchmarks/packing.py --quick          # a tiny shape: checks that the script runs

Two length distributions over ``--rows`` rows, both on the 12M-parameter benchmark model (``benchmarks/common``:
hidden 256, 4 layers, vocabulary 32,000):

- ``countdown``: the built-in task's lengths: each row's prompt and completion token counts drawn from the
  shipped rollouts of ``builtin:countdown-sft`` (``lit_rl/assets/countdown-rollouts.parquet``, its character
  tokenizer), so the padding is what a Countdown batch carries;
- ``long-tail``: prompts of 20 to 200 tokens, completions log-normal (median 48, at most 1024): most rows short, a
  few long, the shape of reasoning rollouts, where the padded batch is mostly padding.

Time is the median of ``--repeats`` steps after a warm-up; memory the peak resident set during them above the one
before them (``benchmarks.common.ResidentPeak``). Ratios are packed over padded.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import ResidentPeak, build_model, resident_bytes  # noqa: E402
from lit_rl.policy import Policy  # noqa: E402


def lengths(kind: str, rows: int, seed: int = 0) -> list[tuple[int, int]]:
    """``(prompt tokens, completion tokens)`` per row."""
    g = torch.Generator().manual_seed(seed)
    if kind == "countdown":
        import pyarrow.parquet as pq

        from lit_rl.policy import resolve

        table = pq.read_table(resolve("builtin:countdown-rollouts.parquet")).to_pydict()
        tokenizer = Policy.load("builtin:countdown-sft").tokenizer
        count = len(table["prompt"])
        picks = torch.randint(0, count, (rows,), generator=g).tolist()
        return [(len(tokenizer(table["prompt"][i])["input_ids"]), max(1, len(tokenizer(table["completion"][i])["input_ids"])))
                for i in picks]
    prompt = torch.randint(20, 201, (rows,), generator=g)
    completion = torch.exp(torch.randn(rows, generator=g) * 1.0 + torch.log(torch.tensor(48.0))).clamp(1, 1024)
    return list(zip(prompt.tolist(), completion.long().tolist()))


def batch(policy: Policy, sizes: list[tuple[int, int]], seed: int = 0):
    """Left-padded prompts and right-padded completions of the given lengths, random token ids."""
    g = torch.Generator().manual_seed(seed)
    vocab = policy.model.config.vocab_size
    prompts = [torch.randint(2, vocab, (p,), generator=g).tolist() for p, _ in sizes]
    completions = [torch.randint(2, vocab, (c,), generator=g).tolist() for _, c in sizes]
    return (*policy.pad(prompts, left=True), *policy.pad(completions, left=False))


def child(kind: str, packed: bool, model: str, rows: int, repeats: int) -> dict:
    torch.manual_seed(0)
    policy = Policy.load(model)
    policy.packed_sequences = packed
    args = batch(policy, lengths(kind, rows))
    mask = args[3]

    def step():
        out = policy(*args, entropy=True)
        ((out.logps * mask).sum() + 0.01 * (out.entropy * mask).sum()).backward()

    step()                                                              # warm-up: the gradient buffers
    before, sampler = resident_bytes(), ResidentPeak("step")
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    real = int(args[1].sum() + args[3].sum())
    return {"seconds": statistics.median(seconds), "peak_bytes": sampler.peaks["step"] - before,
            "real_tokens": real, "padded_tokens": int(args[0].numel() + args[2].numel())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kinds", default="countdown,long-tail")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)     # kind, packed, model
    args = parser.parse_args()
    if args.child:
        kind, packed, model = args.child
        print(json.dumps(child(kind, packed == "packed", model, args.rows, args.repeats)))
        return
    work = Path(tempfile.mkdtemp())
    model = str(build_model(work / "model", vocab=1000 if args.quick else 32000, hidden=128 if args.quick else 256,
                            layers=1 if args.quick else 4))
    rows, repeats = (4, 1) if args.quick else (args.rows, args.repeats)
    print(f"{rows} rows, forward + backward of log-probs and entropy, median of {repeats}")
    for kind in args.kinds.split(","):
        results = {}
        for side in ("padded", "packed"):
            out = subprocess.run([sys.executable, __file__, "--child", kind, side, model, "--rows", str(rows),
                                  "--repeats", str(repeats)], capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"{kind} {side} failed:\n{out.stderr[-3000:]}")
            results[side] = json.loads(out.stdout.strip().splitlines()[-1])
        a, b = results["padded"], results["packed"]
        print(f"{kind}: {a['real_tokens']} real of {a['padded_tokens']} padded tokens "
              f"({a['real_tokens'] / a['padded_tokens']:.2f})")
        for side, r in results.items():
            print(f"  {side:7s} {r['seconds'] * 1e3:9.1f} ms {r['peak_bytes'] / 2**20:9.1f} MiB")
        print(f"  packed / padded: time {b['seconds'] / a['seconds']:.2f}x, "
              f"memory {b['peak_bytes'] / max(a['peak_bytes'], 1):.2f}x")


if __name__ == "__main__":
    main()
