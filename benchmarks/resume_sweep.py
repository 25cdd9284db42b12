"""kill -9 at a random step, resume, and compare with the uninterrupted run.

For each kind (``rl``: RLOO online, ``multiturn``: ReMax on Countdown with feedback, ``offline``: TOPR on the shipped rollouts, ``erpd``: ERPD through a teacher
and a student stage, ``generate``: ``lit-rl generate``, ``critic``: PPO with a separate critic, its first
step training the critic alone) and each seed, three real ``lit-rl`` processes run
small copies of the shipped configs (``builtin:countdown-sft``, a checkpoint every step): one straight through;
one killed with SIGKILL at a random moment after a random step; and the resume of the killed one from its
``last.ckpt`` (for ``generate``: the same command again). The resumed run must end with the straight run's
weights and optimizer state (every tensor equal) and its ``metrics.csv`` rows (every cell equal); ``generate``
with the same ``.jsonl`` and ``.parquet`` bytes.

    .venv/bin/python benchmarks/resume_sweep.py                     # all kinds, seeds 0 1 2
    .venv/bin/python benchmarks/resume_sweep.py --kinds rl --seeds 0
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))                                           # this checkout's lit_rl, as in the children
SHIPPED = {"rl": "rloo.yaml", "multiturn": "countdown_multiturn.yaml", "offline": "topr.yaml", "erpd": "erpd.yaml",
           "generate": "generate.yaml", "critic": "rlhf_ppo.yaml"}
STEPS = {"rl": 6, "multiturn": 6, "offline": 6, "erpd": 6, "generate": 6, "critic": 6}          # generate: batches of prompts


def small_config(kind: str, out: Path, seed: int, model: str = "builtin:countdown-sft",
                 steps: int | None = None) -> Path:
    """A few-second copy of the shipped config of ``kind``: tiny batches, short completions, a checkpoint every
    step, no validation inside training (the summary's validations before and after stay off too)."""
    config = yaml.safe_load((ROOT / "cli_configs" / SHIPPED[kind]).read_text())
    steps = steps or STEPS[kind]
    if kind == "generate":
        config.update(model=model, group_size=2, num_prompts=4 * steps, batch_size=4, seed=seed,
                      sampling={**config["sampling"], "max_new_tokens": 16})
    else:
        config["seed_everything"] = seed
        trainer = config["trainer"]
        trainer.update(max_steps=steps, limit_val_batches=0, enable_progress_bar=False, enable_model_summary=False)
        trainer.pop("val_check_interval", None)
        trainer["callbacks"][0]["init_args"].update(every_n_train_steps=1, save_last=True)
        init = config["model"]["init_args"]
        init.update(model=model, sampling={**init["sampling"], "max_new_tokens": 16},
                    val_sampling={**init["val_sampling"], "max_new_tokens": 16})
        data = config["data"]["init_args"]
        data["batch_size"] = 2
        if kind in ("rl", "multiturn", "critic"):
            init["group_size"] = 2
        if kind == "critic":                            # the policy frozen for a step, then both networks train
            init["critic"]["warmup_steps"] = 1
        if kind == "erpd":                              # 2 prompts x 4 samples: 2 teacher steps, 2 student steps
            init.update(group_size=4, student_steps=2, student_mini_batch_size=8, eval_size=4)
            init["teachers"][0].update(epochs=2, mini_batch_size=8)
        for d in (data, data.get("validation", {}).get("init_args", {})):
            if "val_size" in d:
                d.update(val_size=4, val_batch_size=4)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def command(kind: str, config: Path, root: Path, ckpt: Path | None = None) -> list[str]:
    if kind == "generate":
        return [sys.executable, "-m", "lit_rl.cli", "generate", "--config", str(config),
                "--output", str(root / "rollouts")]
    args = [sys.executable, "-m", "lit_rl.cli", "fit", "--config", str(config), "--summary", "false",
            "--trainer.default_root_dir", str(root)]
    return args + (["--ckpt_path", str(ckpt)] if ckpt else [])


def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def run(args: list[str], log: Path) -> None:
    with log.open("w") as out:
        result = subprocess.run(args, cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}); see {log}:\n{log.read_text()[-3000:]}")


def progress(kind: str, root: Path) -> int:
    """Steps done so far: training rows in metrics.csv, or complete batches of the generated rows."""
    if kind == "generate":
        path = root / "rollouts.jsonl"
        return path.read_bytes().count(b"\n") // (4 * 2) if path.exists() else 0
    return sum(len(p.read_text().splitlines()[1:]) for p in root.glob("*/*/metrics.csv"))   # one row per step


def run_and_kill(args: list[str], kind: str, root: Path, after: int, fraction: float, log: Path) -> float:
    """Start ``args``; once ``after`` steps are done, wait ``fraction`` of the last step's duration (so the kill
    lands inside the next step, its checkpoint save included) and SIGKILL it. Returns the wait in seconds."""
    with log.open("w") as out:
        child = subprocess.Popen(args, cwd=ROOT, env=env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline, seen, times = time.monotonic() + 900, 0, {}
            while seen < after:
                if child.poll() is not None:
                    raise RuntimeError(f"the run ended ({child.returncode}) before it could be killed; see {log}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no progress in {log}")
                if (now := progress(kind, root)) > seen:
                    seen, times[now] = now, time.monotonic()
                time.sleep(0.005)
            step = times[seen] - times[min(times)] if len(times) > 1 else 0.5
            delay = fraction * step / max(1, seen - min(times))
            time.sleep(delay)
        finally:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
            child.wait()
    return delay


def run_dir(root: Path) -> Path:
    (path,) = root.glob("*/*/metrics.csv")
    return path.parent


def rows(path: Path) -> list[dict[str, str]]:
    """metrics.csv's rows without empty cells and wall-clock metrics (``lit_rl.timing.is_wall_clock``)."""
    import csv

    from lit_rl.timing import is_wall_clock

    with path.open(newline="") as f:
        return [{k: v for k, v in r.items() if v != "" and not is_wall_clock(k)} for r in csv.DictReader(f)]


def tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    from lit_rl.checkpointing import _tensors

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return dict(_tensors({"state_dict": ckpt["state_dict"], "optimizer_states": ckpt["optimizer_states"]}, ""))


def compare(kind: str, straight: Path, resumed: Path) -> list[str]:
    """What differs between the straight run and the resumed one (empty: nothing)."""
    if kind == "generate":
        return [suffix for suffix in (".jsonl", ".parquet")
                if (straight / f"rollouts{suffix}").read_bytes() != (resumed / f"rollouts{suffix}").read_bytes()]
    a, b = run_dir(straight), run_dir(resumed)
    problems = []
    ta, tb = tensors(a / "checkpoints" / "last.ckpt"), tensors(b / "checkpoints" / "last.ckpt")
    if ta.keys() != tb.keys() or any(not torch.equal(ta[k], tb[k]) for k in ta):
        problems.append("weights/optimizer state")
    ra, rb = rows(a / "metrics.csv"), rows(b / "metrics.csv")
    if ra != rb:
        first = next((i for i, (x, y) in enumerate(zip(ra, rb)) if x != y), min(len(ra), len(rb)))
        problems.append(f"metrics.csv rows ({len(ra)} vs {len(rb)}; first difference at row {first})")
    return problems


def sweep_one(kind: str, seed: int, work: Path, steps: int | None = None) -> dict:
    """Straight, killed, resumed; returns what happened and what differs."""
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    steps = steps or STEPS[kind]
    config = small_config(kind, work / f"{kind}.yaml", seed, steps=steps)
    rng = random.Random(f"{kind}-{seed}")
    after, fraction = rng.randint(2, steps - 2), rng.random()
    straight, killed = work / "straight", work / "killed"
    run(command(kind, config, straight), work / "straight.log")
    delay = run_and_kill(command(kind, config, killed), kind, killed, after, fraction, work / "killed.log")
    if kind == "generate":
        done = progress(kind, killed)
        run(command(kind, config, killed), work / "resumed.log")
        resumed_from = f"{done} complete batches"
    else:
        last = run_dir(killed) / "checkpoints" / "last.ckpt"
        if last.is_file():
            resumed_from = f"step {torch.load(last, map_location='cpu', weights_only=True, mmap=True)['global_step']}"
            run(command(kind, config, killed, last), work / "resumed.log")
        else:                                                           # killed before its first checkpoint
            resumed_from = "scratch (no checkpoint yet)"
            shutil.rmtree(killed)
            run(command(kind, config, killed), work / "resumed.log")
    return {"kind": kind, "seed": seed, "killed_after": after, "delay": round(delay, 2), "resumed_from": resumed_from,
            "differs": compare(kind, straight, killed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="+", default=list(SHIPPED), choices=list(SHIPPED))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--work", default="runs/resume_sweep")
    args = parser.parse_args()
    failures = 0
    for kind in args.kinds:
        for seed in args.seeds:
            result = sweep_one(kind, seed, Path(args.work).resolve() / f"{kind}-{seed}")
            failures += bool(result["differs"])
            unit = "batch" if kind == "generate" else "step"
            print(f"{kind:8s} seed {seed}: killed {result['delay']:.2f} s after {unit} {result['killed_after']}, "
                  f"resumed from {result['resumed_from']}: "
                  f"{'identical' if not result['differs'] else 'DIFFERS: ' + '; '.join(result['differs'])}", flush=True)
    total = len(args.kinds) * len(args.seeds)
    print(f"{total - failures} of {total} resumed runs identical to the uninterrupted run")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
