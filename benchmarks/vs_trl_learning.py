"""Does lit-rl learn Countdown as fast as TRL? ``GRPO``/``RLOO`` against TRL's ``GRPOTrainer``/``RLOOTrainer``.

    python benchmarks/vs_trl_learning.py [grpo rloo] [--steps 200] [--eval-every 50] [--val-size 500] [--out DIR]

(needs ``pip install -e ".[bench]"`` for TRL). Both libraries train ``builtin:countdown-sft`` (its weights and
tokenizer, float32, CPU) on the rows of ``builtin:countdown-prompts.jsonl`` in the same order, rewarded by the same
Countdown verifier (``lit_rl.CountdownReward``; on TRL's side ``countdown_score`` wrapped as a reward function), with
G = 4 completions of up to 32 tokens at temperature 1.0 for each of 16 prompts per optimizer step, AdamW (lr 1e-4, no
weight decay, constant), gradient-norm clip 1.0, one optimizer step per rollout, no vLLM (lit-rl at its defaults:
its own decoding loop and the shared prompt forward; ``--fast-decode off --shared-prompt-forward off`` runs
``generate`` and one forward per row, as TRL does). GRPO:
group-scaled advantages, PPO clip 0.2/0.28, token-mean loss, no KL by default (``beta = 0``: no reference model on
either side). RLOO: TRL's RLOOTrainer defaults, KL in the reward with ``beta = 0.05`` (see 7). ``--beta`` sets the KL
coefficient of every algorithm run.

Each (library, algorithm) trains in a fresh child process of this script, one at a time. Before training, every
``--eval-every`` steps and after the last, one evaluation function of this script (:func:`held_out_accuracy`: greedy
``generate`` of 32 tokens on the model object the library is training, in batches, scored by the verifier) measures
accuracy on the first ``--val-size`` puzzles of ``countdown-prompts-val.jsonl``; neither library's own validation is
used. The parent prints one line per figure, lit-rl as a ratio of TRL: accuracy before and after, training wall time
(evaluation time measured and subtracted), time per step (its phases where the library reports them), peak RSS, and
the training time at which each first reached ``--target`` held-out accuracy (default: TRL's final accuracy). It writes
``results.json``, ``results.md`` and ``accuracy.png`` (held-out accuracy against training time) into ``--out``.

What cannot be made identical, and why:

1. **Batch units.** TRL's ``per_device_train_batch_size`` counts completions (64 = 16 prompts x 4), lit-rl's
   ``PromptData(batch_size)`` counts prompts (16). Either way one ``generate`` call samples 64 rows per step (TRL:
   ``generation_batch_size = 64``, ``steps_per_generation = 1``) and the loss is one micro-batch of 64.
2. **Prompt order.** lit-rl's loader (``ResumableBatches``) always draws a seeded permutation per epoch;
   ``PromptData`` has no switch to turn it off. TRL gets the rows already in that order (:func:`training_rows`, from
   the very rows and loader lit-rl uses) with ``shuffle_dataset=False``, so its ``RepeatSampler`` walks them as given.
   Each child reports a digest of the prompts it trained on and the parent checks they agree.
3. **Seeds and sampling streams.** Both sides are seeded with ``--seed``, but they consume random numbers differently
   (TRL shuffles each generation batch with ``shuffle_sequence_dict``, its Trainer seeds and draws for its own
   bookkeeping), so the sampled completions differ from the first step on. Each curve is one seed: compare shapes
   and repeat with ``--seed``, do not read small gaps as a difference.
4. **Generation.** Both sample on the training model, temperature 1, top-p 1, top-k 0, stopping at EOS: TRL with
   ``model.generate``, lit-rl with its own loop (``HFEngine(fast_decode=True)``, its default: the same distribution,
   tested against ``generate``'s; ``--fast-decode off`` calls ``generate``). lit-rl switches the model to ``eval()`` around generation, TRL does not; the model has no
   dropout (``attention_dropout = 0``), so the mode changes nothing. TRL pads completions and marks the mask up to the
   first EOS as lit-rl does.
5. **Log-probs.** lit-rl passes position ids that count real tokens only and keeps only the completion's logits;
   TRL passes the attention mask alone (positions count left padding: a constant shift per row, which RoPE's relative
   attention ignores) and takes log-probs from transformers' fused LM head. Same math, different rounding.
6. **GRPO.** TRL ``loss_type="dapo"`` (token sum over the whole batch's tokens) is lit-rl's ``token_mean``;
   ``scale_rewards="group"`` is ``scale: group``; both divide by the Bessel-corrected group std + 1e-4. With one pass
   per rollout both use the detached current log-probs as the old ones (TRL skips the extra forward when
   ``num_iterations = 1``; so does lit-rl), so the ratio is 1 and the clip never binds. With ``--beta > 0`` both add
   ``beta * k3`` to the per-token loss (TRL multiplies it by its importance ratio, here 1).
7. **RLOO.** TRL's ``RLOOTrainer`` puts the KL into the reward (``beta = 0.05`` by default: the first-order ``k1``
   estimate summed over the sequence, subtracted before the leave-one-out baseline); lit-rl does the same with
   ``kl_coef = 0.05, kl_in_reward = true``, so both keep a frozen reference and compute old and reference log-probs
   each step. Neither normalises the advantages (TRL ``normalize_advantages=False``). TRL's loss is
   ``-min(rho A, clip(rho, 0.8, 1.2) A)`` with a sequence-level ratio ``rho = exp(sum_t l - sum_t l_old)``, averaged
   over sequences; at one pass ``rho = 1`` up to the rounding of two forward passes, so its gradient is
   ``-A grad sum_t l_t`` per sequence, averaged: lit-rl's REINFORCE surrogate with ``aggregation:
   seq_mean_token_sum``. lit-rl's RLOO has no clip; the two differ only where ``rho`` leaves ``[0.8, 1.2]``. With
   ``--beta 0`` TRL still computes the old log-probs (its loss always takes them) and lit-rl does not.
8. **Optimizer.** TRL builds ``torch.optim.AdamW`` through ``optim="adamw_torch"`` (betas 0.9/0.999, eps 1e-8) with a
   ``constant`` schedule and no warm-up (the Trainer's default decays linearly); lit-rl gets ``torch.optim.AdamW``
   with the same arguments and no scheduler.
9. **What the clocks measure.** Training time runs from the library's train-start hook (``on_train_begin`` /
   ``on_train_start``) to its train-end hook, minus the evaluations; process start and imports are outside it, and
   so are data and model loading and the trainer's construction (``setup_seconds`` in the JSON: from after the
   imports to the train-start hook). Time per step is the mean step excluding
   the first (warm-up). Phases: lit-rl's ``time/*`` metrics when its module logs them; TRL's logged ``step_time``
   (its ``training_step``: generation, reward, log-probs, loss and backward, without the optimizer step).
10. **Peak RSS** is the child's ``ru_maxrss``: model loading and the evaluations included. Evaluation batches hold
    ``--eval-batch`` = 64 rows, the size of a training generation batch, so evaluating should not set the peak. The
    TRL child also imports lit-rl (the verifier and the prompt order; about 40 MiB of modules here), counted in TRL's
    figure.
11. **Prompt text.** lit-rl renders prompts with the tokenizer's chat template (``chat_template: auto``); this model's
    template returns the message text unchanged, and TRL tokenises the plain text, adding no special tokens with
    this tokenizer: the same token ids (each child checks). Evaluation is greedy and draws no random numbers, so it
    does not shift either side's sampling stream.
"""

import argparse
import hashlib
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODEL = "builtin:countdown-sft"
TRAIN = "builtin:countdown-prompts.jsonl"
VAL = "builtin:countdown-prompts-val.jsonl"
LIBRARIES = ("trl", "lit-rl")
ALGOS = ("grpo", "rloo")
DEFAULT_BETA = {"grpo": 0.0, "rloo": 0.05}                             # TRL RLOOConfig's default beta
EPS_LOW, EPS_HIGH = 0.2, 0.28                                           # GRPO's clip (cli_configs/grpo.yaml)


# ------------------------------------------------------------------------------------------ pure helpers
def training_rows(rows: list[dict[str, Any]], batch_size: int, steps: int, seed: int) -> list[dict[str, Any]]:
    """The rows lit-rl's loader (``ResumableBatches``, as ``PromptData`` builds it) yields in its first ``steps``
    batches, flattened in order: a new permutation each epoch, exactly as a run of ``steps`` steps draws them."""
    from lit_rl.data import ResumableBatches

    batches, drawn = ResumableBatches(rows, batch_size, seed), []
    while len(drawn) < steps:                                           # each pass over it is one epoch
        drawn += itertools.islice(iter(batches), steps - len(drawn))
    return [{key: batch[key][i] for key in batch} for batch in drawn for i in range(len(batch["prompt"]))]


def eval_points(steps: int, every: int) -> list[int]:
    """Steps after which held-out accuracy is measured: 0 (before training), every ``every``, and the last."""
    return sorted({0, steps, *(range(every, steps, every) if every > 0 else ())})


def first_reaching(curve: list[dict[str, float]], target: float) -> dict[str, float] | None:
    """The first evaluation point whose accuracy is at least ``target`` (``None`` if none is)."""
    return next((p for p in curve if p["accuracy"] >= target - 1e-9), None)


def ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


def prompt_digest(prompts: list[str]) -> str:
    return hashlib.sha256("\x1e".join(prompts).encode()).hexdigest()[:16]


def step_seconds(step_ends: list[float]) -> float:
    """Mean step duration from the clock readings at each step's end (training starts at 0), without the first
    (warm-up) step when there are more."""
    durations = [b - a for a, b in zip([0.0, *step_ends], step_ends)]
    return sum(durations[1:]) / (len(durations) - 1) if len(durations) > 1 else durations[0]


def mean_phases(per_step: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each phase over the steps that report it, without the first (warm-up) step when there are more."""
    steps = per_step[1:] if len(per_step) > 1 else per_step
    keys = dict.fromkeys(k for s in steps for k in s)
    return {k: sum(s[k] for s in steps if k in s) / sum(k in s for s in steps) for k in keys}


def fmt(value: float | None, spec: str = ".3f", missing: str = "n/a") -> str:
    return missing if value is None else format(value, spec)


def compare(results: dict[str, dict], target: float | None) -> dict[str, Any]:
    """lit-rl as a ratio of TRL for one algorithm, and when each first reached the target accuracy."""
    trl, lit = results["trl"], results["lit-rl"]
    target = trl["accuracy_after"] if target is None else target
    reached = {lib: first_reaching(r["curve"], target) for lib, r in results.items()}
    return {
        "target": target,
        "reached": reached,
        "same_prompt_order": trl["prompt_order"] == lit["prompt_order"],
        "ratios": {
            "training time": ratio(lit["train_seconds"], trl["train_seconds"]),
            "time per step": ratio(lit["seconds_per_step"], trl["seconds_per_step"]),
            "peak memory": ratio(lit["peak_rss"], trl["peak_rss"]),
            "time to target": ratio(*(None if reached[lib] is None else reached[lib]["seconds"]
                                      for lib in ("lit-rl", "trl"))),
            "final accuracy": ratio(lit["accuracy_after"], trl["accuracy_after"]),
        },
    }


def markdown(results: dict[str, dict[str, dict]], comparisons: dict[str, dict]) -> str:
    head = ("| algorithm | library | accuracy before | accuracy after | training s | s/step | phases (s/step) | "
            "peak RSS MiB | first at target (step, s) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for algo, by_lib in results.items():
        comparison = comparisons[algo]
        for lib, r in by_lib.items():
            hit = comparison["reached"][lib]
            phases = ", ".join(f"{k} {v:.3f}" for k, v in r["phases"].items()) or "-"
            reached = "not reached" if hit is None else "{step}, {seconds:.1f}".format(**hit)
            lines.append(f"| {algo} | {lib} | {r['accuracy_before']:.3f} | {r['accuracy_after']:.3f} | "
                         f"{r['train_seconds']:.1f} | {r['seconds_per_step']:.3f} | {phases} | "
                         f"{r['peak_rss'] / 2**20:.0f} | {reached} |")
        x = {name: fmt(value, ".2f", "n/a") + ("" if value is None else "x")
             for name, value in comparison["ratios"].items()}
        lines.append(f"| {algo} | lit-rl / TRL | | {x['final accuracy']} | {x['training time']} | "
                     f"{x['time per step']} | | {x['peak memory']} | {x['time to target']} "
                     f"(target {comparison['target']:.3f}) |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ the shared evaluation
def held_out_accuracy(model: Any, tokenizer: Any, rows: list[dict[str, Any]], batch_size: int = 64,
                      max_new_tokens: int = 32) -> float:
    """Share of ``rows`` (``prompt``, ``meta.numbers``, ``meta.target``) that greedy decoding of ``max_new_tokens``
    solves, judged by the Countdown verifier. Runs ``model`` in eval mode without gradients and restores its mode."""
    import torch
    from transformers import GenerationConfig

    from lit_rl.tasks.countdown import countdown_score

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    was_training, correct = model.training, 0
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                inputs = tokenizer([r["prompt"] for r in chunk], add_special_tokens=False, padding=True,
                                   padding_side="left", return_tensors="pt").to(model.device)
                out = model.generate(**inputs, generation_config=config)
                texts = tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
                correct += sum(bool(countdown_score(t, r["meta"]["numbers"], r["meta"]["target"]).correct)
                               for t, r in zip(texts, chunk, strict=True))
    finally:
        model.train(was_training)
    return correct / len(rows)


class Curve:
    """Held-out accuracy against training time on a clock that stops while evaluating."""

    def __init__(self, tokenizer: Any, rows: list[dict[str, Any]], points: list[int], batch_size: int) -> None:
        self.tokenizer, self.rows, self.points, self.batch_size = tokenizer, rows, set(points), batch_size
        self.start_time, self.eval_seconds, self.train_seconds = 0.0, 0.0, 0.0
        self.curve: list[dict[str, float]] = []
        self.step_ends: list[float] = []
        self.phases: list[dict[str, float]] = []
        self.prompts: list[str] = []
        self.created, self.setup_seconds = time.perf_counter(), 0.0   # setup: until training starts

    def now(self) -> float:
        return time.perf_counter() - self.start_time - self.eval_seconds

    def start(self, model: Any) -> None:
        self.start_time = time.perf_counter()
        self.setup_seconds = self.start_time - self.created
        self.evaluate(0, model)

    def step_end(self, step: int, model: Any) -> None:
        self.step_ends.append(self.now())
        if step in self.points:
            self.evaluate(step, model)

    def evaluate(self, step: int, model: Any) -> None:
        seconds, begin = self.now() if step else 0.0, time.perf_counter()
        accuracy = held_out_accuracy(model, self.tokenizer, self.rows, self.batch_size)
        self.eval_seconds += time.perf_counter() - begin
        self.curve.append({"step": step, "seconds": seconds, "accuracy": accuracy})
        print(f"step {step}: held-out accuracy {accuracy:.3f} at {seconds:.1f} s", file=sys.stderr, flush=True)

    def end(self) -> None:
        self.train_seconds = self.now()


def check_same_tokens(tokenizer: Any, prompt: str) -> None:
    """lit-rl renders ``prompt`` through the chat template and tokenises without special tokens; TRL tokenises the
    text as given with the tokenizer's defaults. The benchmark assumes both give the same ids."""
    from lit_rl.chat import render_prompt

    if render_prompt(tokenizer, prompt) != prompt:
        raise RuntimeError("the model's chat template changes plain prompts: TRL and lit-rl would see different text")
    if tokenizer(prompt)["input_ids"] != tokenizer(prompt, add_special_tokens=False)["input_ids"]:
        raise RuntimeError("the tokenizer adds special tokens: TRL and lit-rl would see different prompt ids")


# ------------------------------------------------------------------------------------------ the two sides
def run_lit_rl(algo: str, args, curve: Curve) -> None:
    import functools

    import torch
    from lightning.pytorch import Callback, Trainer, seed_everything

    from lit_rl import GRPO, RLOO, CountdownReward, HFEngine, PromptData, Sampling

    class Evaluate(Callback):
        def on_train_start(self, trainer, module):
            curve.start(module.policy.model)

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            curve.prompts += batch["prompt"]

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            curve.phases.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("time/")})
            curve.step_end(trainer.global_step, module.policy.model)

        def on_train_end(self, trainer, module):
            curve.end()

    seed_everything(args.seed, verbose=False)
    common = {"model": MODEL, "group_size": args.group, "reward": CountdownReward("original"), "max_grad_norm": 1.0,
              "sampling": Sampling(temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=args.length),
              "optimizer": functools.partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.0), "log_kl": False,
              "shared_prompt_forward": args.shared_prompt_forward == "on",
              "engine": HFEngine(fast_decode=args.fast_decode == "on")}
    if algo == "grpo":
        module = GRPO(**common, scale="group", eps_low=EPS_LOW, eps_high=EPS_HIGH, aggregation="token_mean",
                      kl_coef=args.beta, kl_estimator="k3", num_iterations=1, mini_batches=1)
    else:
        module = RLOO(**common, aggregation="seq_mean_token_sum", kl_coef=args.beta, kl_in_reward=True)
    check_same_tokens(module.policy.tokenizer, curve.rows[0]["prompt"])
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=args.steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, callbacks=[Evaluate()])
    trainer.fit(module, datamodule=PromptData(TRAIN, batch_size=args.prompts, seed=args.seed))


def run_trl(algo: str, args, curve: Curve) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback

    from lit_rl import PromptData
    from lit_rl.policy import resolve
    from lit_rl.tasks.countdown import countdown_score

    if algo == "grpo":
        from trl import GRPOConfig as Config
        from trl import GRPOTrainer as TRLTrainer
    else:
        from trl import RLOOConfig as Config
        from trl import RLOOTrainer as TRLTrainer

    class Evaluate(TrainerCallback):
        trainer: Any = None

        def model(self):
            return self.trainer.accelerator.unwrap_model(self.trainer.model)

        def on_train_begin(self, args, state, control, **kwargs):
            curve.start(self.model())

        def on_step_end(self, args, state, control, **kwargs):
            curve.step_end(state.global_step, self.model())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "step_time" in logs:                            # TRL's training_step, per step
                curve.phases.append({"step_time": float(logs["step_time"])})

        def on_train_end(self, args, state, control, **kwargs):
            curve.end()

    def countdown_reward(prompts, completions, numbers, target, **kwargs):
        curve.prompts += prompts[::args.group]                          # each prompt comes G times in a row
        return [countdown_score(c, n, t).reward for c, n, t in zip(completions, numbers, target, strict=True)]

    data = PromptData(TRAIN)
    data.setup()
    rows = training_rows(data.train_rows, args.prompts, args.steps, args.seed)
    dataset = Dataset.from_list([{"prompt": r["prompt"], **r["meta"]} for r in rows])
    path = resolve(MODEL)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    check_same_tokens(curve.tokenizer, curve.rows[0]["prompt"])
    settings: dict[str, Any] = {
        "output_dir": tempfile.mkdtemp(), "per_device_train_batch_size": args.prompts * args.group,
        "gradient_accumulation_steps": 1, "num_generations": args.group, "max_completion_length": args.length,
        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "learning_rate": args.lr, "optim": "adamw_torch",
        "weight_decay": 0.0, "lr_scheduler_type": "constant", "warmup_steps": 0, "max_grad_norm": 1.0,
        "max_steps": args.steps, "beta": args.beta, "num_iterations": 1, "epsilon": EPS_LOW, "shuffle_dataset": False,
        "mask_truncated_completions": False, "use_vllm": False, "gradient_checkpointing": False, "use_cpu": True,
        "bf16": False, "fp16": False, "report_to": "none", "save_strategy": "no", "logging_steps": 1,
        "disable_tqdm": True, "seed": args.seed}
    if algo == "grpo":
        settings |= {"epsilon_high": EPS_HIGH, "loss_type": "dapo", "scale_rewards": "group"}
    else:
        settings |= {"normalize_advantages": False}                    # TRL's default clip: epsilon_high = epsilon
    evaluate = Evaluate()
    trainer = TRLTrainer(model=model, reward_funcs=countdown_reward, args=Config(**settings), train_dataset=dataset,
                         processing_class=curve.tokenizer, callbacks=[evaluate])
    evaluate.trainer = trainer
    trainer.train()


def child(which: str, args) -> None:
    from transformers import AutoTokenizer

    from lit_rl import PromptData
    from lit_rl.policy import resolve

    library, algo = which.split(":")
    created = time.perf_counter()
    val = PromptData(VAL)
    val.setup()
    if args.val_size > len(val.train_rows):
        raise SystemExit(f"--val-size {args.val_size} is more than the {len(val.train_rows)} held-out puzzles")
    curve = Curve(AutoTokenizer.from_pretrained(resolve(MODEL)), val.train_rows[:args.val_size],
                  eval_points(args.steps, args.eval_every), args.eval_batch)
    curve.created = created
    (run_trl if library == "trl" else run_lit_rl)(algo, args, curve)
    if len(curve.step_ends) != args.steps:
        raise RuntimeError(f"{library} ran {len(curve.step_ends)} steps, not {args.steps}")
    if len(curve.prompts) != args.steps * args.prompts:
        raise RuntimeError(f"{library} trained on {len(curve.prompts)} prompts, not {args.steps * args.prompts}")
    result = {
        "library": library, "algo": algo, "steps": args.steps, "beta": args.beta,
        "accuracy_before": curve.curve[0]["accuracy"], "accuracy_after": curve.curve[-1]["accuracy"],
        "curve": curve.curve, "train_seconds": curve.train_seconds, "eval_seconds": curve.eval_seconds,
        "setup_seconds": curve.setup_seconds, "seconds_per_step": step_seconds(curve.step_ends),
        "phases": mean_phases(curve.phases), "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "prompt_order": prompt_digest(curve.prompts), "first_prompts": curve.prompts[:2],
    }
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------ parent
def plot(results: dict[str, dict[str, dict]], comparisons: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (algo, by_lib) in zip(axes[0], results.items()):
        for lib, r in by_lib.items():
            ax.plot([p["seconds"] for p in r["curve"]], [p["accuracy"] for p in r["curve"]], marker="o", label=lib)
        ax.axhline(comparisons[algo]["target"], color="grey", linestyle="--", linewidth=0.8, label="target")
        ax.set(title=f"{algo.upper()} on Countdown ({next(iter(by_lib.values()))['steps']} steps)",
               xlabel="training wall time, s (evaluation excluded)", ylabel="held-out greedy accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(algo: str, by_lib: dict[str, dict], comparison: dict[str, Any]) -> None:
    for lib, r in by_lib.items():
        hit = comparison["reached"][lib]
        reached = "not reached" if hit is None else f"first at step {hit['step']} ({hit['seconds']:.1f} s)"
        print(f"{algo} {lib:6s} accuracy {r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f}, training "
              f"{r['train_seconds']:.1f} s, {r['seconds_per_step']:.3f} s/step, peak RSS "
              f"{r['peak_rss'] / 2**20:.0f} MiB, accuracy {comparison['target']:.3f} {reached}")
        if r["phases"]:
            print(f"{algo} {lib:6s} phases per step: " + ", ".join(f"{k} {v:.3f} s" for k, v in r["phases"].items()))
    if not comparison["same_prompt_order"]:
        print(f"{algo} WARNING: the libraries trained on different prompt sequences (digests "
              f"{by_lib['trl']['prompt_order']} vs {by_lib['lit-rl']['prompt_order']})")
    for name, value in comparison["ratios"].items():
        name = f"time to accuracy {comparison['target']:.3f}" if name == "time to target" else name
        shown = "n/a (TRL was there before training, or lit-rl never got there)" if value is None else f"{value:.2f}x"
        print(f"{algo} lit-rl / TRL {name}: {shown}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("algos", nargs="*", metavar="ALGO", help=f"any of {', '.join(ALGOS)} (default: both)")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps (one rollout each)")
    parser.add_argument("--eval-every", type=int, default=50, help="held-out evaluation every N steps")
    parser.add_argument("--val-size", type=int, default=500, help="held-out puzzles (of 500)")
    parser.add_argument("--eval-batch", type=int, default=64, help="prompts per evaluation generate call")
    parser.add_argument("--target", type=float, default=None, help="accuracy to time (default: TRL's final)")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step")
    parser.add_argument("--group", type=int, default=4, help="completions per prompt (G)")
    parser.add_argument("--length", type=int, default=32, help="max completion tokens")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=None,
                        help="KL coefficient on both sides (default: 0 for GRPO, TRL RLOOConfig's 0.05 for RLOO)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shared-prompt-forward", choices=["on", "off"], default="on",
                        help="lit-rl's shared_prompt_forward (each prompt computed once for its G samples; default on)")
    parser.add_argument("--fast-decode", choices=["on", "off"], default="on",
                        help="lit-rl's HFEngine(fast_decode) (its own decoding loop; off: generate; default on)")
    parser.add_argument("--out", default="runs/vs_trl_learning")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if unknown := [a for a in args.algos if a not in ALGOS]:
        parser.error(f"unknown algorithm(s) {unknown}; choose from {list(ALGOS)}")
    if args.steps < 1 or args.val_size < 1 or args.eval_batch < 1:
        parser.error("--steps, --val-size and --eval-batch must be >= 1")
    if args.child:
        return child(args.child, args)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    algos = list(dict.fromkeys(args.algos or ALGOS))
    results: dict[str, dict[str, dict]] = {}
    comparisons: dict[str, dict] = {}
    for algo in algos:
        beta = DEFAULT_BETA[algo] if args.beta is None else args.beta
        flags = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                 ("steps", "eval_every", "val_size", "eval_batch", "prompts", "group", "length", "lr", "seed",
                  "shared_prompt_forward", "fast_decode")]
        results[algo] = {}
        for library in LIBRARIES:
            print(f"{algo} {library}: training {args.steps} steps ...", flush=True)
            cmd = [sys.executable, __file__, *flags, f"--beta={beta}", "--child", f"{library}:{algo}"]
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
            (out / f"{algo}-{library}.log").write_text(proc.stdout + proc.stderr)
            line = [text for text in proc.stdout.splitlines() if text.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                raise SystemExit(f"{algo} {library} failed (exit {proc.returncode}); log in "
                                 f"{out / f'{algo}-{library}.log'}:\n{proc.stderr[-3000:]}")
            results[algo][library] = json.loads(line[0][len("RESULT "):])
        comparisons[algo] = compare(results[algo], args.target)
        report(algo, results[algo], comparisons[algo])
    (out / "results.json").write_text(json.dumps({"settings": vars(args) | {"child": None}, "results": results,
                                                  "comparisons": comparisons}, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results, comparisons))
    plot(results, comparisons, out / "accuracy.png")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'} and {out / 'accuracy.png'}")


if __name__ == "__main__":
    main()
