"""lit-rl GRPO against TRL's ``GRPOTrainer``, side by side on CPU: wall time per step and peak memory.

    python benchmarks/vs_trl.py [--steps 6] [--prompts 4] [--group 4] [--length 64] [--repeats 1] [--shared-prompt-forward off] [--fast-decode off]

(needs ``pip install -e ".[bench]"`` for TRL). Both train the same ~12M-parameter Qwen2-style model
(benchmarks/common.py, float32, vocabulary 32000) on the same prompts with the same settings: group size,
completion length (the random model almost never stops early, so both generate prompts x group x length tokens
per step), learning rate, AdamW without weight decay, PPO clip 0.2, token-mean loss (TRL's ``dapo``), group
reward scaling, no KL (TRL's default ``beta = 0``: no reference model on either side), one pass per rollout,
gradient-norm clip 1.0, no gradient checkpointing. TRL samples with HF ``generate``, lit-rl with its defaults:
its own decoding loop on the same model (``HFEngine(fast_decode)``, the same sampling distribution) and the shared
prompt forward (``--fast-decode off``, ``--shared-prompt-forward off``: ``generate`` and one forward per row).
Each runs in a fresh process;
time per step excludes the first step (warm-up); peak memory is the process's maximum resident set size.
Prints one line per figure, lit-rl as a ratio of TRL.
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import build_model, num_parameters, prompts  # noqa: E402


PHASES: list[dict[str, float]] = []                                     # lit-rl's time/* metrics, per step


def reward_values(completions: list[str]) -> list[float]:
    """Share of words whose number is divisible by 7: cheap, and varies between samples."""
    out = []
    for text in completions:
        words = [w for w in text.split() if w[1:].isdigit()]
        out.append(sum(int(w[1:]) % 7 == 0 for w in words) / max(1, len(words)))
    return out


def run_lit_rl(path: str, texts: list[str], args) -> list[float]:
    from lightning.pytorch import Callback, LightningDataModule, Trainer

    import torch
    from lit_rl import GRPO, HFEngine, RewardFunction, Sampling, Score
    from lit_rl.data import ResumableBatches

    class Reward(RewardFunction):
        def __call__(self, completion, meta):
            return Score(reward_values([completion])[0])

    class Prompts(LightningDataModule):
        def train_dataloader(self):
            return ResumableBatches([{"prompt": t, "meta": {}} for t in texts], args.prompts)

    class Clock(Callback):
        times: list[float] = []

        def on_train_batch_end(self, trainer, *a):
            self.times.append(time.perf_counter())
            if len(self.times) > 1:                                     # the first step is warm-up
                PHASES.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("time/")})

    torch.manual_seed(0)
    module = GRPO(model=path, group_size=args.group, sampling=Sampling(temperature=1.0, max_new_tokens=args.length),
                  reward=Reward(), kl_coef=0.0, log_kl=False, aggregation="token_mean", eps_low=0.2, eps_high=0.2,
                  max_grad_norm=1.0, optimizer=lambda p: torch.optim.AdamW(p, lr=args.lr, weight_decay=0.0),
                  shared_prompt_forward=args.shared_prompt_forward == "on",
                  engine=HFEngine(fast_decode=args.fast_decode == "on"))
    clock = Clock()
    trainer = Trainer(accelerator="cpu", max_steps=args.steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[clock])
    trainer.fit(module, datamodule=Prompts())
    return clock.times


def run_trl(path: str, texts: list[str], args) -> list[float]:
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class Clock(TrainerCallback):
        times: list[float] = []

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter())

    def reward(prompts, completions, **kwargs):
        return reward_values(completions)

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.prompts * args.group, num_generations=args.group,
        max_completion_length=args.length, learning_rate=args.lr, max_steps=args.steps, beta=0.0, epsilon=0.2,
        loss_type="dapo", scale_rewards="group", num_iterations=1, temperature=1.0, max_grad_norm=1.0,
        weight_decay=0.0, lr_scheduler_type="constant", warmup_steps=0, gradient_checkpointing=False, use_cpu=True,
        bf16=False, fp16=False, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    clock = Clock()
    trainer = GRPOTrainer(model=path, reward_funcs=reward, args=config, train_dataset=Dataset.from_dict({"prompt": texts}),
                          processing_class=AutoTokenizer.from_pretrained(path), callbacks=[clock])
    trainer.train()
    return clock.times


def child(which: str, path: str, args) -> None:
    texts = prompts(args.prompts * args.steps, 16)
    times = (run_lit_rl if which == "lit-rl" else run_trl)(path, texts, args)
    if len(times) != args.steps:
        raise RuntimeError(f"{which} ran {len(times)} steps, not {args.steps}")
    per_step = (times[-1] - times[0]) / (args.steps - 1)
    print(f"RESULT {per_step} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}")
    if PHASES:
        means = {k.removeprefix("time/"): sum(p[k] for p in PHASES) / len(PHASES) for k in PHASES[0]}
        print("PHASES " + ", ".join(f"{k} {v:.3f} s" for k, v in means.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--shared-prompt-forward", choices=["on", "off"], default="on",
                        help="lit-rl's shared_prompt_forward (each prompt computed once for its G samples; default on)")
    parser.add_argument("--fast-decode", choices=["on", "off"], default="on",
                        help="lit-rl's HFEngine(fast_decode) (its own decoding loop; off: generate; default on)")
    parser.add_argument("--child", choices=["lit-rl", "trl"])
    parser.add_argument("--model")
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first step is warm-up)")
    if args.child:
        return child(args.child, args.model, args)
    path = str(build_model(tempfile.mkdtemp()))
    print(f"model {num_parameters(path) / 1e6:.1f}M parameters; {args.prompts} prompts x {args.group} samples x "
          f"{args.length} tokens per step, {args.steps} steps", flush=True)
    flags = [f"--{k.replace('_', '-')}={getattr(args, k)}"
             for k in ("steps", "prompts", "group", "length", "lr", "shared_prompt_forward", "fast_decode")]
    results: dict[str, list[tuple[float, float]]] = {"lit-rl": [], "trl": []}
    for _ in range(args.repeats):
        for which in ("trl", "lit-rl"):
            out = subprocess.run([sys.executable, __file__, "--child", which, "--model", path, *flags], cwd=ROOT,
                                 capture_output=True, text=True)
            line = [row for row in out.stdout.splitlines() if row.startswith("RESULT")]
            if out.returncode != 0 or not line:
                raise SystemExit(f"{which} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
            seconds, rss = map(float, line[0].split()[1:])
            results[which].append((seconds, rss))
            phases = [row.removeprefix("PHASES ") for row in out.stdout.splitlines() if row.startswith("PHASES")]
            print(f"{which:7s} {seconds:.3f} s/step, peak RSS {rss / 2**20:.0f} MiB"
                  + (f"; a step: {phases[0]}" if phases else ""), flush=True)
    best = {k: (min(s for s, _ in v), min(r for _, r in v)) for k, v in results.items()}
    print(f"lit-rl / TRL time per step: {best['lit-rl'][0] / best['trl'][0]:.2f}x")
    print(f"lit-rl / TRL peak memory: {best['lit-rl'][1] / best['trl'][1]:.2f}x")


if __name__ == "__main__":
    main()
