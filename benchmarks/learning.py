"""Does RL raise held-out accuracy over the shipped SFT warm start? One line per algorithm:

    python benchmarks/learning.py reinforce remax rloo grpo [--val-size 500] [--max-steps N] [-- extra lit-rl args]

Each algorithm runs ``lit-rl fit --config cli_configs/ALGO.yaml`` (its shipped settings and seed) in a fresh
process, validated on ``--val-size`` held-out puzzles before and after training, and prints
``ALGO accuracy A0 -> A1 reward R0 -> R1 seconds S`` (S: training time, validation excluded).
"""

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^(\w+): accuracy ([\d.]+) -> ([\d.]+), mean reward (-?[\d.]+) -> (-?[\d.]+), (\d+) steps, (\d+) s$",
                     re.MULTILINE)


def run(algo: str, val_size: int, max_steps: int | None, extra: list[str]) -> str:
    cmd = [sys.executable, "-m", "lit_rl.cli", "fit", "--config", str(ROOT / "cli_configs" / f"{algo}.yaml"),
           "--data.init_args.val_size", str(val_size), "--trainer.enable_progress_bar", "false", *extra]
    if max_steps is not None:
        cmd += ["--trainer.max_steps", str(max_steps)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    match = SUMMARY.search(out.stdout)
    if out.returncode != 0 or match is None:
        return f"{algo} failed (exit {out.returncode}): {out.stderr.strip().splitlines()[-1:] }"
    _, a0, a1, r0, r1, _, seconds = match.groups()
    return f"{algo} accuracy {a0} -> {a1} reward {r0} -> {r1} seconds {seconds}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("algos", nargs="+")
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--max-steps", type=int, default=None, help="override each config's max_steps")
    args, extra = parser.parse_known_args()
    for algo in args.algos:
        print(run(algo, args.val_size, args.max_steps, [a for a in extra if a != "--"]), flush=True)


if __name__ == "__main__":
    main()
