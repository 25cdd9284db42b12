"""RLHF on the built-in Countdown with a learned reward model: every method against the same reward model
(``builtin:countdown-rm``, the proxy) from the same SFT start, the Countdown verifier as the gold reward.

    python benchmarks/rlhf.py remax rloo grpo ppo rebel mc [--max-steps N] [--val-size 500] [--val-every 50]
    python benchmarks/rlhf.py --memory [--memory-steps 5 25]       # ReMax vs PPO: peak memory, time per step

For each method: held-out proxy reward (the reward model's score of greedy completions, ``val/reward_mean``) and
gold accuracy (``val/gold_accuracy``) before and after, and both at every validation, so the curve of proxy
against gold shows over-optimisation (the proxy rising while gold accuracy stops or falls). Writes
``<out>/rlhf.json``, ``<out>/rlhf.md`` and ``<out>/rlhf.png``.

``--memory`` runs ReMax and PPO (value head) with the same reward model, no validation, for two step counts;
time per step is the difference of the two wall times over the difference of steps (process start-up and model
loading cancel), peak memory the larger run's peak resident set (CPU) or peak CUDA memory (GPU). The ReMax
paper's headline is GPU memory on 7B models; a 664K-parameter model on CPU measures the bookkeeping, not the
weights: read the ratio with that in mind.
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
           "grpo": "grpo", "ppo": "ppo"}                               # the last two: their task config, RM swapped in
PEAK = ("import resource, runpy, sys, torch\n"
        "sys.argv = ['lit-rl', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('lit_rl.cli', run_name='__main__')\n"
        "finally:\n    print('PEAK_RSS_MIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
        "'PEAK_CUDA_MIB', torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0, flush=True)")


def config(method: str, out: Path) -> Path:
    """The method's YAML with the reward model as its reward and the verifier as its gold reward."""
    cfg = yaml.safe_load((ROOT / "cli_configs" / f"{CONFIGS[method]}.yaml").read_text())
    cfg["model"]["init_args"]["reward"] = RM
    cfg["model"]["init_args"]["gold_reward"] = GOLD
    path = out / f"{method}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def fit(method: str, out: Path, args: list[str]) -> tuple[str, float, dict[str, float]]:
    """Run ``lit-rl fit``; its stdout, wall seconds and peak memory."""
    run_dir = out / method
    cmd = [sys.executable, "-c", PEAK, "fit", "--config", str(config(method, out)), "--trainer.enable_progress_bar",
           "false", "--trainer.default_root_dir", str(run_dir), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
    words = proc.stdout.split()
    peak = {k: float(words[words.index(k) + 1]) for k in ("PEAK_RSS_MIB", "PEAK_CUDA_MIB")}
    return proc.stdout, seconds, peak


def validations(method: str, out: Path) -> list[dict[str, float]]:
    """``step``, ``proxy`` and ``gold`` at every validation of the method's run (metrics.csv)."""
    metrics = next((out / method).rglob("metrics.csv"))
    points = []
    with metrics.open() as f:
        for row in csv.DictReader(f):
            if row.get("val/gold_accuracy"):
                points.append({"step": int(row["step"]), "proxy": float(row["val/reward_mean"]),
                               "gold": float(row["val/gold_accuracy"])})
    return points


def curves(methods: list[str], out: Path, max_steps: int | None, val_size: int, val_every: int) -> list[dict]:
    results = []
    for method in methods:
        args = ["--data.init_args.val_size", str(val_size), "--summary", "true",
                "--trainer.val_check_interval", str(val_every)]
        if max_steps is not None:
            args += ["--trainer.max_steps", str(max_steps)]
        stdout, seconds, _ = fit(method, out, args)
        summary = [line for line in stdout.splitlines() if "gold accuracy" in line]
        points = validations(method, out)
        results.append({"method": method, "points": points, "seconds": round(seconds), "summary": summary[-1:]})
        print(json.dumps(results[-1]), flush=True)
    return results


def memory(out: Path, steps: tuple[int, int]) -> list[dict]:
    rows = []
    for method in ("remax", "ppo"):
        runs = [fit(method, out / f"mem{n}", ["--summary", "false", "--trainer.max_steps", str(n),
                                              "--trainer.limit_val_batches", "0"]) for n in steps]
        per_step = (runs[1][1] - runs[0][1]) / (steps[1] - steps[0])
        rows.append({"method": method, "seconds_per_step": round(per_step, 3), **runs[1][2]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (proxy, gold) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        steps = [p["step"] for p in r["points"]]
        proxy.plot(steps, [p["proxy"] for p in r["points"]], marker="o", label=r["method"])
        gold.plot(steps, [p["gold"] for p in r["points"]], marker="o", label=r["method"])
    proxy.set(xlabel="step", ylabel="held-out proxy reward (countdown-rm)", title="proxy reward")
    gold.set(xlabel="step", ylabel="held-out gold accuracy (verifier)", title="gold accuracy")
    gold.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("methods", nargs="*", default=[])
    parser.add_argument("--out", default="runs/benchmarks/rlhf")
    parser.add_argument("--max-steps", type=int, default=None, help="override each config's max_steps")
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--memory", action="store_true", help="ReMax vs PPO: peak memory and time per step")
    parser.add_argument("--memory-steps", type=int, nargs=2, default=(5, 25))
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    if args.methods:
        results = curves(args.methods, out, args.max_steps, args.val_size, args.val_every)
        lines += ["| method | steps | proxy reward | gold accuracy | peak gold (step) | seconds |", "| --- " * 6 + "|"]
        for r in results:
            first, last = r["points"][0], r["points"][-1]
            best = max(r["points"], key=lambda p: p["gold"])
            lines.append(f"| {r['method']} | {last['step']} | {first['proxy']:.3f} -> {last['proxy']:.3f} | "
                         f"{first['gold']:.3f} -> {last['gold']:.3f} | {best['gold']:.3f} ({best['step']}) | "
                         f"{r['seconds']} |")
        (out / "rlhf.json").write_text(json.dumps(results, indent=1))
        plot(results, out / "rlhf.png")
    if args.memory:
        rows = memory(out, tuple(args.memory_steps))
        lines += ["", "| method | seconds per step | peak RSS MiB | peak CUDA MiB |", "| --- " * 4 + "|"]
        lines += [f"| {r['method']} | {r['seconds_per_step']} | {r['PEAK_RSS_MIB']:.0f} | {r['PEAK_CUDA_MIB']:.0f} |"
                  for r in rows]
    (out / "rlhf.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
