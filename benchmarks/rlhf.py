"""RLHF on the built-in Countdown with a learned reward model: every method against the same reward model
(``builtin:countdown-rm``, the proxy) from the same SFT start, the Countdown verifier as the gold reward.

    python benchmarks/rlhf.py remax rloo grpo ppo ppo_critic rebel mc [--rollouts 100] [--val-every 25] [--kl-coef 0.05]
    python benchmarks/rlhf.py --memory [--memory-steps 5 25]       # ReMax vs PPO: peak memory, time per step

Every method gets the same budget and the same regulariser: ``--rollouts`` rollout batches of 16 prompts x G
(GRPO and PPO take ``num_iterations x mini_batches`` optimizer steps on each, as their configs say), and ReMax's
KL to the SFT reference in the reward, ``-beta * sum_t (log pi_old - log pi_ref)``, for all (it replaces GRPO's
k3 loss term). For each method: held-out proxy reward (the reward model's score of greedy completions,
``val/reward_mean``) and gold accuracy (``val/gold_accuracy``) before and after, and both at every validation,
so the curve of proxy against gold shows over-optimisation (the proxy rising while gold accuracy stops or
falls). Writes ``<out>/rlhf.json``, ``<out>/rlhf.md`` and ``<out>/rlhf.png``.

``ppo`` is PPO with its value head on the policy; ``ppo_critic`` PPO with a separate critic initialised from the
reward model (``cli_configs/rlhf_ppo.yaml``), as OpenRLHF initialises it.

``--memory`` runs ReMax and both PPOs with the same reward model, no validation, for two step counts;
time per step is the difference of the two wall times over the difference of steps (process start-up and model
loading cancel), peak memory the larger run's peak resident set (CPU) or peak CUDA memory (GPU). The ReMax
paper's headline is GPU memory on 7B models; a 664K-parameter model on CPU measures the bookkeeping, not the
weights: ``benchmarks/critic_memory.py`` measures it at 179M parameters, phase by phase.
"""

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RM = {"class_path": "lit_rl.RewardModel", "init_args": {"model": "builtin:countdown-rm", "micro_batch_size": 64}}
GOLD = {"class_path": "lit_rl.CountdownReward", "init_args": {"scheme": "original"}}
CONFIGS = {"remax": "rlhf_remax", "rloo": "rlhf_rloo", "rebel": "rlhf_rebel", "mc": "rlhf_mc",
           "grpo": "grpo", "ppo": "ppo",                                # these two: their task config, RM swapped in
           "ppo_critic": "rlhf_ppo"}
PEAK = ("import resource, runpy, sys, torch\n"
        "sys.argv = ['lit-rl', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('lit_rl.cli', run_name='__main__')\n"
        "finally:\n    print('PEAK_RSS_MIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
        "'PEAK_CUDA_MIB', torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0, flush=True)")


def passes(cfg: dict) -> int:
    """Optimizer steps per rollout batch."""
    args = cfg["model"]["init_args"]
    return args.get("num_iterations", 1) * args.get("mini_batches", 1)


def config(method: str, out: Path, rollouts: int, kl_coef: float) -> Path:
    """The method's YAML with the reward model as its reward, the verifier as its gold reward, the KL in the
    reward and ``rollouts`` rollout batches."""
    cfg = yaml.safe_load((ROOT / "cli_configs" / f"{CONFIGS[method]}.yaml").read_text())
    cfg["model"]["init_args"].update(reward=RM, gold_reward=GOLD, kl_coef=kl_coef, kl_in_reward=kl_coef > 0)
    cfg["trainer"]["max_steps"] = rollouts * passes(cfg)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{method}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def fit(method: str, out: Path, rollouts: int, kl_coef: float, args: list[str]) -> tuple[str, float, dict]:
    """Run ``lit-rl fit``; its stdout, wall seconds and peak memory."""
    run_dir = out / method
    cmd = [sys.executable, "-c", PEAK, "fit", "--config", str(config(method, out, rollouts, kl_coef)),
           "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
    words = proc.stdout.split()
    peak = {k: float(words[words.index(k) + 1]) for k in ("PEAK_RSS_MIB", "PEAK_CUDA_MIB")}
    return proc.stdout, seconds, peak


def validations(method: str, out: Path, rollouts: int, val_every: int) -> list[dict[str, float]]:
    """``rollout``, ``proxy`` and ``gold`` at every validation of the run (metrics.csv): the summary's before
    (rollout 0), one every ``val_every`` rollout batches, and the summary's after, dropped when it repeats the
    last one (same weights). Lightning logs a validation at the count of batches before it, hence the
    rollout numbers from the schedule rather than from the ``step`` column."""
    metrics = next((out / method).rglob("metrics.csv"))
    with metrics.open() as f:
        rows = [row for row in csv.DictReader(f) if row.get("val/gold_accuracy")]
    points = [{"rollout": min(i * val_every, rollouts), "proxy": float(row["val/reward_mean"]),
               "gold": float(row["val/gold_accuracy"])} for i, row in enumerate(rows)]
    if len(points) > 1 and points[-1]["rollout"] == points[-2]["rollout"]:
        points.pop()
    return points


def curves(methods: list[str], out: Path, rollouts: int, kl_coef: float, val_size: int, val_every: int) -> list:
    results = []
    for method in methods:
        args = ["--data.init_args.val_size", str(val_size), "--summary", "true",
                "--trainer.val_check_interval", str(val_every)]            # counts rollout batches
        stdout, seconds, _ = fit(method, out, rollouts, kl_coef, args)
        summary = [line for line in stdout.splitlines() if "gold accuracy" in line]
        points = validations(method, out, rollouts, val_every)
        results.append({"method": method, "points": points, "seconds": round(seconds), "summary": summary[-1:]})
        print(json.dumps(results[-1]), flush=True)
    return results


def memory(out: Path, steps: tuple[int, int], kl_coef: float) -> list[dict]:
    rows = []
    for method in ("remax", "ppo", "ppo_critic"):
        runs = [fit(method, out / f"mem{n}", n, kl_coef, ["--summary", "false", "--trainer.limit_val_batches", "0"])
                for n in steps]
        per_step = (runs[1][1] - runs[0][1]) / (steps[1] - steps[0])
        rows.append({"method": method, "seconds_per_rollout": round(per_step, 3), **runs[1][2]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (proxy, gold) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        steps = [p["rollout"] for p in r["points"]]
        proxy.plot(steps, [p["proxy"] for p in r["points"]], marker="o", label=r["method"])
        gold.plot(steps, [p["gold"] for p in r["points"]], marker="o", label=r["method"])
    proxy.set(xlabel="rollout batch", ylabel="held-out proxy reward (countdown-rm)", title="proxy reward")
    gold.set(xlabel="rollout batch", ylabel="held-out gold accuracy (verifier)", title="gold accuracy")
    gold.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("methods", nargs="*", default=[])
    parser.add_argument("--out", default="runs/benchmarks/rlhf")
    parser.add_argument("--rollouts", type=int, default=100, help="rollout batches for every method")
    parser.add_argument("--kl-coef", type=float, default=0.05, help="beta of the KL in the reward (0: none)")
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--val-every", type=int, default=25, help="rollout batches between validations")
    parser.add_argument("--memory", action="store_true", help="ReMax vs both PPOs: peak memory and time per step")
    parser.add_argument("--memory-steps", type=int, nargs=2, default=(5, 25))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    if args.methods:
        results = curves(args.methods, out, args.rollouts, args.kl_coef, args.val_size, args.val_every)
        lines += ["| method | rollouts | proxy reward | gold accuracy | peak gold (rollout) | seconds |",
                  "| --- " * 6 + "|"]
        for r in results:
            first, last = r["points"][0], r["points"][-1]
            best = max(r["points"], key=lambda p: p["gold"])
            lines.append(f"| {r['method']} | {last['rollout']} | {first['proxy']:.3f} -> {last['proxy']:.3f} | "
                         f"{first['gold']:.3f} -> {last['gold']:.3f} | {best['gold']:.3f} ({best['rollout']}) | "
                         f"{r['seconds']} |")
        (out / "rlhf.json").write_text(json.dumps(results, indent=1))
        plot(results, out / "rlhf.png")
    if args.memory:
        rows = memory(out, tuple(args.memory_steps), args.kl_coef)
        lines += ["", "| method | seconds per rollout | peak RSS MiB | peak CUDA MiB |", "| --- " * 4 + "|"]
        lines += [f"| {r['method']} | {r['seconds_per_rollout']} | {r['PEAK_RSS_MIB']:.0f} | {r['PEAK_CUDA_MIB']:.0f} |"
                  for r in rows]
    (out / "rlhf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
