"""The Countdown study's comparison (rloo-vs-topr-countdown, Tables 1-2) at lit-rl's scale, plus the preference
objectives trained from the same stored data. One line per method: ``METHOD accuracy A reward R``.

    python benchmarks/offpolicy.py [--prompts 1024] [--steps 200] [--val-size 500] [--methods ...]

1. ``lit-rl generate --config cli_configs/generate.yaml`` writes a dataset of 4 scored samples for each of
   ``--prompts`` training puzzles from the shipped SFT checkpoint (reused if it is already there).
2. Each method runs ``lit-rl fit --config cli_configs/METHOD.yaml`` in a fresh process for ``--steps`` optimizer
   steps from the SFT checkpoint; the offline ones read the dataset of step 1. ``topr_A+B`` is ``topr_A`` followed
   by ``--steps`` more steps with reward B from ``topr_A``'s exported model, on the same data.
3. Accuracy and mean reward are greedy, on ``--val-size`` held-out puzzles, under the ``original`` reward
   (the study's "Average Score"); ``sft`` is the starting checkpoint.
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r"^(\w+): accuracy ([\d.]+) -> ([\d.]+), mean reward (-?[\d.]+) -> (-?[\d.]+), (\d+) steps, (\d+) s$",
                     re.MULTILINE)
REWARD = "--data.init_args.reward={{class_path: lit_rl.CountdownReward, init_args: {{scheme: {}}}}}"
# method -> (config, extra arguments); offline methods also get the dataset's path
METHODS = {
    "rloo": ("rloo", []),
    "topr_original": ("topr", []),
    "topr_A": ("topr", [REWARD.format("A")]),
    "topr_A+B": ("topr", [REWARD.format("B")]),                      # started from topr_A's model
    "rebel": ("rebel", []),
    "dpo": ("dpo", []),
    "ipo": ("ipo", []),
    "mc": ("mc", []),
}


def lit_rl(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lit_rl.cli", *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed (exit {out.returncode}): {out.stderr[-2000:]}")
    return out


def fit(method: str, config: str, extra: list[str], root: Path, steps: int, val_size: int) -> tuple[re.Match, Path]:
    """One method's run in ``root/method``; returns its summary line and run directory."""
    out = lit_rl("fit", "--config", str(ROOT / "cli_configs" / f"{config}.yaml"), "--trainer.max_steps", str(steps),
                 "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root / method), *extra,
                 *_val_size(config, val_size))
    run_dir = max((root / method).glob("*/*"), key=lambda p: p.stat().st_mtime)
    return SUMMARY.search(out.stdout), run_dir


def _val_size(config: str, val_size: int) -> list[str]:
    key = "--data.init_args.val_size" if config == "rloo" else "--data.init_args.validation.init_args.val_size"
    return [key, str(val_size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=1024, help="training puzzles in the generated dataset")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per method (16 prompts each)")
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--root", default=str(ROOT / "runs" / "bench-offpolicy"))
    args = parser.parse_args()
    root = Path(args.root)
    dataset = root / f"rollouts-{args.prompts}"
    if not dataset.with_suffix(".parquet").exists():
        out = lit_rl("generate", "--config", str(ROOT / "cli_configs" / "generate.yaml"), "--output", str(dataset),
                     "--num_prompts", str(args.prompts))
        print(out.stdout.strip().splitlines()[-1], flush=True)
    data = ["--data.init_args.path", str(dataset.with_suffix(".parquet"))]
    printed_sft, models = False, {}
    for method in args.methods:
        config, extra = METHODS[method]
        if method == "topr_A+B":
            if "topr_A" not in models:
                _, models["topr_A"] = fit("topr_A", "topr", data + METHODS["topr_A"][1], root, args.steps, args.val_size)
            extra = extra + ["--model.init_args.model", str(models["topr_A"] / "hf_model")]
        match, models[method] = fit(method, config, extra + (data if config != "rloo" else []), root, args.steps,
                                    args.val_size)
        if match is None:
            print(f"{method} produced no summary (see {models[method]})", flush=True)
            continue
        _, a0, a1, r0, r1, steps, seconds = match.groups()
        if not printed_sft and method != "topr_A+B":
            print(f"sft accuracy {a0} reward {r0}", flush=True)
            printed_sft = True
        print(f"{method} accuracy {a1} reward {r1}  ({steps} steps, {seconds} s)", flush=True)


if __name__ == "__main__":
    main()
