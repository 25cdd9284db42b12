"""Peak memory and time of per-token log-probs from the last hidden states in chunks
(``lit_rl.logprobs.hidden_token_logps``) against materialised logits (``token_logps(head(hidden))``), forward and
backward, at Qwen2.5's output-layer shapes: 0.5B (hidden 896) and 7B (hidden 3584), vocabulary 151,936.

    python benchmarks/logprobs.py [--models 0.5b,7b] [--shapes 16x128,64x128,16x1024,64x1024] [--chunk 1024]
                                  [--device cuda] [--dtype bfloat16] [--repeats 3] [--no-entropy]
    python benchmarks/logprobs.py --quick          # a tiny shape on the CPU: checks that the script runs

Each (model, shape, method) runs in a fresh process. The head's weight and the hidden states are random (no
download); both require gradients, as in full fine-tuning. Like the policy's training forward, both methods also
compute the entropy (``--no-entropy``: log-probs only). Extra peak memory is what the forward and backward add to
what the process held before them (inputs, weight and the weight's gradient buffer from a warm-up step): on CUDA
``torch.cuda.max_memory_allocated`` minus the allocated bytes before; on the CPU the peak of the process's resident
set, sampled every 2 ms by a thread during the measured steps, minus the resident set before them. Time is the
median of ``--repeats`` steps after the warm-up (CUDA synchronised).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time

from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ResidentPeak, resident_bytes  # noqa: E402
from lit_rl.logprobs import hidden_token_logps, token_logps, token_logps_entropy  # noqa: E402

MODELS = {"0.5b": (896, 151936), "7b": (3584, 151936), "tiny": (64, 1000)}        # hidden, vocabulary


def step(method: str, head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk: int, entropy: bool) -> None:
    if method == "chunked":
        logps, ent = hidden_token_logps(hidden, head, labels, 1.0, chunk, entropy)
    else:
        logits = head(hidden)                                               # [B, T, V]
        logps, ent = token_logps_entropy(logits, labels) if entropy else (token_logps(logits, labels), None)
    loss = logps.sum() + (ent.sum() if ent is not None else 0)
    loss.backward()


def child(method: str, model: str, batch: int, tokens: int, chunk: int, device: str, dtype: str, repeats: int,
          entropy: bool) -> dict:
    width, vocab = MODELS[model]
    torch.manual_seed(0)
    kind = dict(device=device, dtype=getattr(torch, dtype))
    head = nn.Linear(width, vocab, bias=False, **kind)
    nn.init.normal_(head.weight, std=width ** -0.5)
    hidden = torch.randn(batch, tokens, width, **kind).requires_grad_()
    labels = torch.randint(0, vocab, (batch, tokens), device=device)
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    try:
        step(method, head, hidden, labels, chunk, entropy)                  # warm-up: allocates the gradients
        hidden.grad = None
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before, sampler = resident_bytes(), ResidentPeak("step")
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            step(method, head, hidden, labels, chunk, entropy)
            sync()
            seconds.append(time.perf_counter() - start)
            hidden.grad = None
        peak = (torch.cuda.max_memory_allocated() if cuda else sampler.peaks["step"]) - before
    except torch.OutOfMemoryError:
        return {"oom": True}
    return {"oom": False, "peak_bytes": peak, "seconds": statistics.median(seconds)}


def run(args: argparse.Namespace, method: str, model: str, batch: int, tokens: int) -> dict:
    command = [sys.executable, __file__, "--child", method, "--models", model, "--shapes", f"{batch}x{tokens}",
               "--chunk", str(args.chunk), "--device", args.device, "--dtype", args.dtype, "--repeats",
               str(args.repeats)] + (["--no-entropy"] if args.no_entropy else [])
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{method} {model} {batch}x{tokens} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def describe(result: dict) -> str:
    if result["oom"]:
        return f"{'out of memory':>28s}"
    return f"{result['peak_bytes'] / 2**20:10.1f} MiB {result['seconds'] * 1e3:11.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="0.5b,7b", help=f"comma-separated, of {sorted(MODELS)}")
    parser.add_argument("--shapes", default="16x128,64x128,16x1024,64x1024", help="BATCHxTOKENS, comma-separated")
    parser.add_argument("--chunk", type=int, default=1024, help="tokens per chunk of the chunked method")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-entropy", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a tiny shape on the CPU, one repeat")
    parser.add_argument("--child", choices=["logits", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.models, args.shapes, args.device, args.repeats, args.chunk = "tiny", "2x16,3x10", "cpu", 1, 8
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    shapes = [tuple(int(n) for n in s.split("x")) for s in args.shapes.split(",")]
    if args.child:
        (batch, tokens), = shapes
        print(json.dumps(child(args.child, args.models, batch, tokens, args.chunk, args.device, args.dtype,
                               args.repeats, not args.no_entropy)))
        return
    print(f"device {args.device}, {args.dtype}, chunks of {args.chunk} tokens, "
          f"{'log-probs and entropy' if not args.no_entropy else 'log-probs'}, forward + backward")
    for model in args.models.split(","):
        width, vocab = MODELS[model]
        for batch, tokens in shapes:
            logits_mib = batch * tokens * vocab * torch.finfo(getattr(torch, args.dtype)).bits / 8 / 2**20
            results = {method: run(args, method, model, batch, tokens) for method in ("logits", "chunked")}
            print(f"{model} (H {width}, V {vocab}) {batch}x{tokens}: logits alone {logits_mib:.0f} MiB")
            for method, result in results.items():
                print(f"  {method:8s} {describe(result)}")
            a, b = results["logits"], results["chunked"]
            if not (a["oom"] or b["oom"]):
                print(f"  chunked / logits: memory {b['peak_bytes'] / max(a['peak_bytes'], 1):.2f}x, "
                      f"time {b['seconds'] / a['seconds']:.2f}x")


if __name__ == "__main__":
    main()
