"""ERPD on the built-in Countdown: the shapes of the paper's Table 1 (teacher losses, one fixed batch) and
Table 2 (iterations with and without distillation). One line per row: ``METHOD accuracy A kl K``.

    python benchmarks/erpd.py                  # both tables (32 prompts x 8 samples, 500 held-out puzzles)
    python benchmarks/erpd.py --quick          # a smaller batch and evaluation (a few minutes)
    python benchmarks/erpd.py --table 1 --losses ce mse --eval-size 200 -- --model.init_args.student_steps 8

Every run starts from ``builtin:countdown-sft`` with seed 0, so all teacher losses train on the same fixed
rollout batch (``--prompts`` x ``--group-size`` samples at temperature 1). Accuracy: greedy decoding on
``--eval-size`` held-out puzzles. KL: ``KL(policy || base)`` on the policy's own samples (``kl_samples`` per
prompt of the fixed batch), the k3 estimate (unbiased and never negative; the paper's k1, the token mean of
``log pi - log pi_base``, is unbiased too but reads negative on small samples).
Table 1 uses ``cli_configs/erpd.yaml`` (CE), ``erpd_sapo.yaml``, ``erpd_grpo.yaml`` and ``erpd_mse.yaml``
(strategy 2: the signal is ``log pi_e - log pi_un``). The configs are written for 32 prompts x 8 samples; on
another batch a strategy-2 teacher's ``unlearned_step`` keeps its share of the teacher's stage (``--quick``:
a 4-step MSE stage takes ``pi_un`` after 1 step, not 4, the last, which would make ``pi_un`` the teacher
itself); each change is printed. Table 2 iterates the config of ``--iteration-loss`` with
its distillation and again with ``student_steps: 0`` (each teacher becomes the next ``pi_old``). The first
iteration with distillation is the same computation as that loss's Table 1 run, so it is run once.
"""

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
LOSSES = {"ce": "erpd.yaml", "sapo": "erpd_sapo.yaml", "grpo": "erpd_grpo.yaml", "mse": "erpd_mse.yaml"}
CONFIG_ROWS = 32 * 8                                                   # the batch the shipped configs are written for


def stage_length(teacher, rows: int) -> int:
    return teacher.epochs * math.ceil(rows / teacher.mini_batch_size)


def scale_unlearned(teachers: list, rows: int) -> list | None:
    """The teachers with each strategy-2 ``unlearned_step`` moved to the same share of its stage on ``rows``
    rows as on the configs' ``CONFIG_ROWS`` (at least step 1, before the last step); ``None`` if none moves."""
    scaled = []
    for teacher in teachers:
        if teacher.strategy == 2:
            length = stage_length(teacher, rows)
            share = teacher.unlearned_step / stage_length(teacher, CONFIG_ROWS)
            step = min(max(1, round(share * length)), max(1, length - 1))
            teacher = dataclasses.replace(teacher, unlearned_step=step)
        scaled.append(teacher)
    return scaled if scaled != list(teachers) else None


def run(config: str, iterations: int, args: argparse.Namespace, extra: list[str]) -> list[dict]:
    """One ERPD run of ``iterations`` iterations in this process; returns the module's history."""
    from lit_rl.cli import LitRLCLI

    overrides = ["--trainer.logger", "false", "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
                 "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
                 "--trainer.limit_val_batches", "0", "--data.init_args.batch_size", str(args.prompts),
                 "--data.init_args.val_size", str(args.eval_size), "--model.init_args.eval_size", str(args.eval_size),
                 "--model.init_args.group_size", str(args.group_size), *extra]
    cli = LitRLCLI(run=False, args=["--config", str(ROOT / "cli_configs" / config), *overrides])
    module, rows = cli.model, args.prompts * args.group_size
    own_teachers = any(a.startswith("--model.init_args.teachers") for a in extra)   # a user's teachers: as given
    if not own_teachers and (scaled := scale_unlearned(module.teachers, rows)) is not None:
        for k, (old, new) in enumerate(zip(module.teachers, scaled)):
            if old != new:
                print(f"# {config}: teachers[{k}].unlearned_step {old.unlearned_step} -> {new.unlearned_step} "
                      f"(a {stage_length(new, rows)}-step stage on {rows} rows)", flush=True)
        from lit_rl.resume import describe

        teachers = json.dumps([describe(t) for t in scaled])           # the loss value as its class_path and init_args
        cli = LitRLCLI(run=False, args=["--config", str(ROOT / "cli_configs" / config), *overrides,
                                        "--model.init_args.teachers", teachers])
        module = cli.model
    schedule = module.schedule
    per_iteration = sum(t.epochs * math.ceil(rows / t.mini_batch_size) for t in schedule.teachers)
    per_iteration += schedule.student_steps * (len(schedule.teachers) if schedule.ensemble == "sequential" else 1)
    cli.trainer.fit_loop.epoch_loop.max_steps = iterations * (per_iteration + schedule.online_steps)
    cli.trainer.fit(module, datamodule=cli.datamodule)
    return schedule.history


def line(name: str, record: dict) -> str:
    return f"{name} accuracy {record['accuracy']:.3f} kl {record['kl_base']:.4f}"


def by_stage(history: list[dict], iteration: int) -> dict[str, dict]:
    return {h["stage"]: h for h in history if h["iteration"] == iteration or h["stage"] == "base"}


def print_table1_rows(loss: str, history: list[dict], with_base: bool) -> None:
    stages = by_stage(history, 1)
    if with_base:
        print(line("base", stages["base"]), flush=True)
    print(line(loss.upper(), stages["teacher"]), flush=True)
    print(line(f"{loss.upper()}+distillation", stages["student"]) + f" ratio {stages['student']['ratio']:.3f}",
          flush=True)


def print_table2(label: str, history: list[dict]) -> None:
    for record in history:
        if record["stage"] != "base":
            role = "teacher" if record["stage"] == "teacher" else "student"
            print(line(f"{label} iteration {record['iteration']} {role}", record), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=["1", "2", "all"], default="all")
    parser.add_argument("--losses", nargs="+", choices=list(LOSSES), default=list(LOSSES))
    parser.add_argument("--prompts", type=int, default=32, help="prompts of the fixed rollout batch")
    parser.add_argument("--group-size", type=int, default=8, help="samples per prompt")
    parser.add_argument("--eval-size", type=int, default=500, help="held-out puzzles per evaluation")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--iteration-loss", choices=list(LOSSES), default="ce", help="the teacher loss of Table 2")
    parser.add_argument("--quick", action="store_true", help="16 prompts x 4 samples, 100 held-out puzzles")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if args.quick:
        args.prompts, args.group_size, args.eval_size = 16, 4, 100
    start = time.perf_counter()
    iterative = {}                                                      # Table 2's first iteration is a Table 1 row
    if args.table in ("2", "all"):
        iterative["with-distillation"] = run(LOSSES[args.iteration_loss], args.iterations, args, extra)
    if args.table in ("1", "all"):
        for i, loss in enumerate(args.losses):
            reuse = loss == args.iteration_loss and iterative
            history = iterative["with-distillation"] if reuse else run(LOSSES[loss], 1, args, extra)
            print_table1_rows(loss, history, with_base=i == 0)
    if args.table in ("2", "all"):
        iterative["without-distillation"] = run(LOSSES[args.iteration_loss], args.iterations, args,
                                                extra + ["--model.init_args.student_steps", "0"])
        for label, history in iterative.items():
            print_table2(label, history)
    print(f"# {time.perf_counter() - start:.0f} s, {args.prompts} prompts x {args.group_size} samples, "
          f"{args.eval_size} held-out puzzles", flush=True)


if __name__ == "__main__":
    main()
