"""Does multi-turn training learn? ``cli_configs/countdown_multiturn.yaml`` (ReMax on Countdown with feedback,
up to 3 attempts) from the shipped SFT model, in a fresh ``lit-rl`` process, then greedy episodes of the model
before and after on the config's held-out puzzles: first-attempt accuracy (solved at turn 1) and final accuracy
(solved within the episode's turns), and the training wall time.

    .venv/bin/python benchmarks/multiturn.py                       # the shipped config, 500 held-out puzzles
    .venv/bin/python benchmarks/multiturn.py --max-steps 100       # shorter
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from lit_rl import CountdownData, CountdownFeedback, HFEngine, MultiTurn, Policy, Sampling  # noqa: E402
from lit_rl.collect import Sampler  # noqa: E402


@torch.no_grad()
def accuracies(model: str, config: dict) -> tuple[float, float]:
    """First-attempt and final accuracy of greedy episodes on the config's held-out puzzles."""
    init = config["model"]["init_args"]
    data = CountdownData(**config["data"]["init_args"])
    data.setup("fit")
    policy = Policy.load(model).eval()
    engine = HFEngine()
    engine.bind(policy.model, policy.tokenizer)
    collector = MultiTurn(CountdownFeedback(**init["collector"]["init_args"]["environment"].get("init_args", {})),
                          max_turns=init["collector"]["init_args"]["max_turns"])
    first = final = total = 0
    for batch in data.val_dataloader():
        rollout = collector.collect(Sampler(policy, engine), batch["prompt"], batch["meta"],
                                    Sampling(**init["val_sampling"]))
        solved = (rollout.correct == 1).tolist()
        turns = [sum(m["role"] == "assistant" for m in t) for t in rollout.turns]
        first += sum(s and n == 1 for s, n in zip(solved, turns))
        final += sum(solved)
        total += len(solved)
    return first / total, final / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / "cli_configs" / "countdown_multiturn.yaml").read_text())
    with tempfile.TemporaryDirectory() as root:
        command = [sys.executable, "-m", "lit_rl.cli", "fit", "--config", str(ROOT / "cli_configs" /
                   "countdown_multiturn.yaml"), "--trainer.default_root_dir", root, "--summary", "false",
                   "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0"]
        if args.max_steps:
            command += ["--trainer.max_steps", str(args.max_steps)]
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT)
        seconds = time.perf_counter() - start
        (trained,) = Path(root).glob("*/*/hf_model")
        before = accuracies(config["model"]["init_args"]["model"], config)
        after = accuracies(str(trained), config)
    steps = args.max_steps or config["trainer"]["max_steps"]
    print(f"countdown_multiturn: first-attempt accuracy {before[0]:.3f} -> {after[0]:.3f}, final accuracy "
          f"{before[1]:.3f} -> {after[1]:.3f}, {steps} steps, {seconds:.0f} s of training (process start to exit)")


if __name__ == "__main__":
    main()
