"""The ReMax paper's headline where weights dominate: ReMax against PPO with a separate critic and PPO with a value
head, peak memory and time per rollout, phase by phase.

    python benchmarks/critic_memory.py [--layers 12] [--rollouts 3] [--kl-coef 0.05]

A randomly initialised Qwen2-shaped policy (Qwen2.5-0.5B's blocks: hidden 896, 14 heads, 2 key/value heads, MLP
4864; ``--layers`` of them, 12 by default: 179M parameters, 0.67 GiB in float32) over the Countdown character
vocabulary, built once under ``--out``. Each method runs in a fresh process of this script, float32 on the CPU,
the same prompts (``CountdownData``, seed 0), the same reward model (``builtin:countdown-rm``) and the same KL
in the reward (``--kl-coef``; 0 drops the reference): ReMax (one greedy decode per prompt), PPO with a separate
critic initialised from the policy's checkpoint (the paper's PPO: a second network of the policy's size with
its own gradients and Adam moments) and PPO with a value head on the policy (lit-rl's default). PPO takes two
optimizer steps per rollout (its config's ``num_iterations``), ReMax one.

Memory is the process's resident set, sampled every 2 ms by a thread and attributed to the phase running then
(``generate``, ``score``, ``old_logps``, ``ref_logps``, ``values``, ``forward_backward``, ``optimizer``;
``other`` between them); the table gives each phase's peak and, from the tensors themselves, what the weights,
the reference, the critic and the optimizer's moments hold. Time per rollout is the mean of ``time/step`` over
the rollouts after the first (which allocates the moments). Two cores, one run at a time.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GIB = 2**30


def build_model(out: Path, layers: int) -> Path:
    """The random Qwen2-shaped policy, saved once with the Countdown tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from lit_rl.policy import Policy

    path = out / f"qwen2-{layers}l"
    if (path / "config.json").exists():
        return path
    tokenizer = Policy.load("builtin:countdown-sft").tokenizer
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
                         num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def mean(steps: list[dict[str, float]], key: str) -> float:
    return sum(s.get(key, 0.0) for s in steps) / max(1, len(steps))


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def one(method: str, model: str, rollouts: int, kl_coef: float) -> dict:
    """One method's run in this process: what its phases peaked at and took."""
    import torch
    from lightning.pytorch import Callback, Trainer

    from lit_rl import PPO, CountdownData, CriticSettings, ReMax, RewardModel, Sampling
    from benchmarks.common import ResidentPeak, resident_bytes
    from lit_rl.timing import PhaseTimer

    torch.manual_seed(0)
    sampler = ResidentPeak()
    start_rss = resident_bytes()

    class MemoryTimer(PhaseTimer):
        @contextmanager
        def __call__(self, phase):
            sampler.phase = phase
            try:
                with super().__call__(phase):
                    yield
            finally:
                sampler.phase = "other"

    common = dict(model=model, group_size=2, sampling=Sampling(temperature=1.0, max_new_tokens=16),
                  val_sampling=Sampling(temperature=0.0, max_new_tokens=16), kl_coef=kl_coef,
                  kl_in_reward=kl_coef > 0, reward=RewardModel(model="builtin:countdown-rm"),
                  optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5, weight_decay=0.0))
    if method == "remax":
        module = ReMax(**common, aggregation="seq_mean_token_sum")
    else:
        critic = CriticSettings() if method == "ppo_critic" else None
        module = PPO(**common, critic=critic, aggregation="token_mean", num_iterations=2)
    module.timer = module.sampler.timer = MemoryTimer()
    loaded_rss = resident_bytes()
    steps: list[dict[str, float]] = []

    class Steps(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            steps.append({k[5:]: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("time/")})

    passes = 1 if method == "remax" else 2
    trainer = Trainer(accelerator="cpu", max_steps=rollouts * passes, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      callbacks=[Steps()])
    trainer.fit(module, datamodule=CountdownData(batch_size=4, val_size=4))
    optimizer = module.optimizers().optimizer
    moments = [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t) and t.dim()]
    reference = module.policy._reference[0].parameters() if module.policy._reference else []
    return {
        "method": method, "seconds_per_rollout": mean(steps[1:], "step"),
        "phase_seconds": {k: mean(steps[1:], k) for k in steps[-1] if k != "step"},
        "peak_gib": max(sampler.peaks.values()) / GIB, "ru_maxrss_gib": resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
        "start_gib": start_rss / GIB, "loaded_gib": loaded_rss / GIB,
        "phase_peak_gib": {k: v / GIB for k, v in sorted(sampler.peaks.items(), key=lambda kv: kv[1])},
        "held_gib": {"policy": tensor_bytes(module.policy.parameters()) / GIB,
                     "reference": tensor_bytes(reference) / GIB,
                     "critic": tensor_bytes(module.critic.parameters()) / GIB if getattr(module, "critic", None) else 0,
                     "adam_moments": tensor_bytes(moments) / GIB,
                     "reward_model": tensor_bytes(module.reward_fn.model.parameters()) / GIB},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--rollouts", type=int, default=3)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--methods", nargs="+", default=["remax", "ppo_critic", "ppo_head"])
    parser.add_argument("--out", default="runs/benchmarks/critic_memory")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT", json.dumps(one(args.one, args.model, args.rollouts, args.kl_coef)), flush=True)
        return
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(out, args.layers)
    rows = []
    for method in args.methods:
        proc = subprocess.run([sys.executable, __file__, "--one", method, "--model", str(model), "--rollouts",
                               str(args.rollouts), "--kl-coef", str(args.kl_coef)], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0:
            raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.split("RESULT ", 1)[1]))
        print(json.dumps(rows[-1]), flush=True)
    (out / "critic_memory.json").write_text(json.dumps(rows, indent=1))
    by = {r["method"]: r for r in rows}
    phases = sorted({p for r in rows for p in r["phase_peak_gib"]})
    lines = ["| | " + " | ".join(by) + " |", "| --- " * (len(by) + 1) + "|"]
    lines.append("| peak resident set, GiB | " + " | ".join(f"{r['peak_gib']:.2f}" for r in rows) + " |")
    if "remax" in by:
        lines.append("| ReMax / this | " + " | ".join(f"{by['remax']['peak_gib'] / r['peak_gib']:.2f}x" for r in rows)
                     + " |")
    lines.append("| seconds per rollout | " + " | ".join(f"{r['seconds_per_rollout']:.1f}" for r in rows) + " |")
    lines.append("| process before the models | " + " | ".join(f"{r['start_gib']:.2f}" for r in rows) + " |")
    lines.append("| after loading | " + " | ".join(f"{r['loaded_gib']:.2f}" for r in rows) + " |")
    for phase in sorted({p for r in rows for p in r["phase_seconds"]}):
        lines.append(f"| seconds in {phase} | " + " | ".join(f"{r['phase_seconds'].get(phase, 0):.2f}" for r in rows)
                     + " |")
    for key in rows[0]["held_gib"]:
        lines.append(f"| held: {key} | " + " | ".join(f"{r['held_gib'][key]:.2f}" for r in rows) + " |")
    for phase in phases:
        lines.append(f"| peak in {phase} | " + " | ".join(f"{r['phase_peak_gib'].get(phase, 0):.2f}" for r in rows)
                     + " |")
    (out / "critic_memory.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
