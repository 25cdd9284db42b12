"""The first steps of every shipped config, as numbers: what a restructuring of the loop must leave alone.

Each shipped fit config under ``cli_configs/`` runs ``--steps`` training steps (seed 0, its own model and data,
completions cut to 16 tokens, 2 prompts a step, no validation) in a fresh ``lit-rl`` process, and its
``metrics.csv`` rows (wall-clock columns left out) are printed as JSON, or written with ``--write``. Run it from
two checkouts on one machine and compare the files: the same code gives the same numbers, cell for cell.
``tests/test_first_steps.py`` compares today's first step with ``tests/data/first_steps.json``, written by the
code before the collector restructuring.

    .venv/bin/python benchmarks/first_steps.py --write /tmp/after.json
    PYTHONPATH=../old .venv/bin/python benchmarks/first_steps.py --root ../old --write /tmp/before.json
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]
# Fit configs that run on this machine from shipped data (sft trains for minutes; reward_model trains a reward model).
CONFIGS = ("reinforce", "remax", "rloo", "grpo", "ppo", "topr", "rebel", "dpo", "ipo", "mc", "erpd", "erpd_grpo",
           "erpd_ppo", "erpd_sapo", "erpd_mse", "rlhf_remax", "rlhf_rloo", "rlhf_rebel", "rlhf_mc", "countdown_prompts")


def small(config: dict) -> dict:
    """The config with short completions, 2 prompts a step, no validation and no checkpoints."""
    trainer = config["trainer"]
    trainer.update(limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False, callbacks=[])
    trainer.pop("val_check_interval", None)
    init = config["model"]["init_args"]
    for key in ("sampling", "val_sampling"):
        if key in init:
            init[key] = {**init[key], "max_new_tokens": 16}
    data = config["data"]["init_args"]
    data["batch_size"] = 2
    if "teachers" in init:                                  # ERPD: 2 prompts x G samples, 2 rows a teacher step
        init.update(student_steps=1, student_mini_batch_size=2 * init.get("group_size", 8), eval_size=4)
        for teacher in init["teachers"]:
            teacher.update(epochs=1, mini_batch_size=2)
    return config


def first_steps(name: str, steps: int, root: Path) -> list[dict[str, str]]:
    from lit_rl.timing import is_wall_clock

    config = small(yaml.safe_load((root / "cli_configs" / f"{name}.yaml").read_text()))
    with tempfile.TemporaryDirectory() as work:
        path = Path(work, f"{name}.yaml")
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(root)}
        run = subprocess.run([sys.executable, "-m", "lit_rl.cli", "fit", "--config", str(path), "--summary", "false",
                              "--trainer.max_steps", str(steps), "--trainer.default_root_dir", work], cwd=root,
                             env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{name}: lit-rl fit failed ({run.returncode}):\n{run.stderr[-3000:]}")
        (metrics,) = Path(work).glob("*/*/metrics.csv")
        with metrics.open(newline="") as f:
            return [{k: v for k, v in row.items() if v != "" and not is_wall_clock(k)} for row in csv.DictReader(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--root", default=str(ROOT), help="the checkout whose code and configs run")
    parser.add_argument("--write", help="write the JSON here instead of printing it")
    args = parser.parse_args()
    out = {name: first_steps(name, args.steps, Path(args.root).resolve()) for name in args.configs}
    text = json.dumps(out, indent=1, sort_keys=True)
    if args.write:
        Path(args.write).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
