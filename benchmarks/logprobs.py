"""Peak memory and time of lit-rl's per-token log-probs against a naive ``log_softmax(...).gather``.

    python benchmarks/logprobs.py [--vocab 32000] [--length 1024] [--batch 1]

Each method runs forward + backward in a fresh process; peak memory is the rise of the process's maximum
resident set size over what it held once the logits existed, reported as a multiple of the logits' own size.
"""

import argparse
import resource
import subprocess
import sys
import time

import torch

from lit_rl.logprobs import token_logps


def naive(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), -1).gather(-1, labels[..., None]).squeeze(-1)


def child(method: str, batch: int, length: int, vocab: int) -> None:
    torch.manual_seed(0)
    logits = torch.randn(batch, length, vocab, requires_grad=True)
    labels = torch.randint(0, vocab, (batch, length))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = token_logps(logits, labels) if method == "lit-rl" else naive(logits, labels)
    out.sum().backward()
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(f"{peak_kib * 1024} {seconds}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--child", choices=["lit-rl", "naive"])
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.batch, args.length, args.vocab)
    logits_bytes = args.batch * args.length * args.vocab * 4
    results = {}
    for method in ("naive", "lit-rl"):
        out = subprocess.run([sys.executable, __file__, "--child", method, "--vocab", str(args.vocab), "--length",
                              str(args.length), "--batch", str(args.batch)], capture_output=True, text=True, check=True)
        peak, seconds = map(float, out.stdout.split())
        results[method] = (peak, seconds)
        print(f"{method:7s} extra peak memory {peak / 2**20:8.1f} MiB = {peak / logits_bytes:.2f}x logits "
              f"({logits_bytes / 2**20:.0f} MiB), forward+backward {seconds:.3f} s")
    (np_, ns), (lp, ls) = results["naive"], results["lit-rl"]
    print(f"lit-rl / naive: memory {lp / np_:.2f}x, time {ls / ns:.2f}x")


if __name__ == "__main__":
    main()
