"""Every algorithm under every Lightning strategy, in bf16, on one GPU: does it train, does the bf16 loss track
float32, and what does a step cost (time, tokens/s, peak GPU memory, model FLOPs utilisation)?

    pip install --no-deps deepspeed-*.whl         # the carried wheel (nothing downloadable on the GPU machine)
    python benchmarks/gpu_check.py [--out gpu_check.json] [--algorithms grpo ppo] [--strategies none zero3]
    python benchmarks/gpu_check.py --cpu-dry-run  # the same code path on CPU with a tiny model, in about a minute

What it runs:
1. A random model shaped like Qwen2.5-0.5B (hidden 896, intermediate 4864, 24 layers, 14 attention heads,
   2 KV heads, head_dim 64, vocabulary 151936, tied embeddings, q/k/v bias, rope theta 1e6; 494M parameters),
   built locally, saved in bf16 and loaded through lit-rl's ``model=`` path. As in benchmarks/common.py it is a
   ``LlamaForCausalLM`` with ``attention_bias=True`` (which also biases o_proj: 21K parameters more than
   Qwen2's), because ``AutoTokenizer`` would swap a ``qwen2`` model's saved tokenizer for Qwen's own.
   Its tokenizer is not common.py's word-level one, whose vocabulary knows no Countdown word (every prompt
   would be ``<pad>``s) and whose decoder puts a space between any two tokens (every completion then has the
   same word count, so the reward below ties in every group and DPO has no pairs). Here prompts are split into
   Countdown's characters (``lit_rl.tokenizer``'s construction) and the rest of the vocabulary is filler words
   ``w<i>``, half of them ending in a space: a random model's completions get varying word counts.
2. GRPO, ReMax, RLOO, PPO (value head), DPO (online: each group's best and worst sample) and ERPD (one CE
   teacher step, one student step) each run ``--steps`` training steps on Countdown prompts (``CountdownData``)
   scored by ``CountdownReward(scheme="A")``, whose no-answer reward ``-0.0003 x words`` is the one that varies
   between a random model's samples (the ``original`` scheme gives them all 0: zero advantages, no DPO pair).
   Weights in float32 (``dtype: float32``) computed in bf16 (``precision: bf16-mixed``), as the shipped
   Qwen2.5-0.5B examples do (AdamW on bf16 weights would lose nearly every update at their lr; under DeepSpeed
   its bf16 config casts the model and keeps float32 master weights); AdamW at ``--lr`` (1e-6, theirs), no
   weight decay; everything else at the module's defaults.
3. Strategies, one subprocess each (a crash or a hang loses one strategy, never the report): ``none`` (one
   device), ``fsdp2`` (cli_configs/strategies/fsdp.yaml: ``ModelParallelStrategy``, ``fully_shard`` through
   ``PolicyModule.configure_model``), ``zero2`` and ``zero3`` (deepspeed_zero{2,3}.yaml as shipped, including
   their ``max_grad_norm: null`` and ``precision: bf16-mixed``), all with ``devices=1``. Inside a subprocess
   the algorithms run in turn, each from a fresh module and Trainer, its peak memory counted from
   ``torch.cuda.reset_peak_memory_stats()`` (less what an earlier algorithm left allocated). A failing
   configuration is recorded as FAILED with its error's last line (and the traceback's end in the JSON) and the
   next one runs. DeepSpeed rows are ``skipped: needs CUDA and deepspeed`` when either is missing.
4. Checks: every ``train/loss`` the module logs is finite (and at least one was logged: read from the module's
   ``log`` calls, one per optimizer step); under ``none`` the first training step is run again in float32
   (``dtype: float32``, ``precision: 32-true``) from the same seed on the very same rollout (the bf16 run's
   generations are recorded and replayed; the rewards follow from the text), and the first optimizer step's
   ``train/loss`` and ``train/grad_norm`` are compared: ``|bf16 - fp32| <= rtol * max(|fp32|, floor)``, rtol
   2e-2 and floor 1e-3 for the loss, rtol 5e-2 and floor 1e-6 for the gradient norm. Why these: bf16 keeps 8
   significant bits (rounding 2^-9 = 2e-3 relative); the log-probs are computed in float32 from bf16 logits
   and averaged over ~1e3 tokens, which shrinks that rounding, so a loss read from them (ReMax's, RLOO's,
   ERPD's) agrees to ~1e-4 relative and 2e-2 leaves room for 24 layers. The floor is for the step-1 losses
   that cancel: the policy is then its own reference and ``pi_old``, so GRPO's and PPO's clipped ratio is 1
   and DPO's margin 0, and GRPO's, RLOO's and PPO's centred advantages sum to ~0: below 1e-3 the check is an
   absolute 2e-5, far above what bf16 log-probs move those losses (~1e-7 on the dry run) and far below what
   advantages computed in bf16 move them (~1e-3: seen on PPO before its value head was taken out of
   autocast). The gradient norm reads the bf16 backward itself: a norm over 5e8 bf16 gradients agrees to a
   few 1e-3 (< 4e-3 on the dry run); 5e-2 catches a gradient lost or doubled. A row whose every gradient norm
   is 0 gets a warning: under ZeRO the gradients live in DeepSpeed's partitions and the module's norm may see
   none.
5. Reports per (strategy, algorithm), over the steps after the first (the first is warm-up: CUDA kernels
   load, the allocator grows; with ``--steps 1`` the first): ``time/step``, ``time/generate`` and
   ``time/forward_backward`` (the module's own timers, which synchronise CUDA), generation tokens/s
   (``rollout/tokens_per_s``), training tokens/s (prompt + completion tokens, padding excluded, through
   forward + backward per second of ``time/forward_backward``), peak GPU memory
   (``torch.cuda.max_memory_allocated``) and model FLOPs utilisation
   ``6 N tokens / time_forward_backward / peak`` (``--peak-tflops``: 989 dense bf16 for an H200 SXM). 6N
   counts the LM head for prompt tokens, whose logits lit-rl never computes (``logits_to_keep``: ~10% too
   many FLOPs here), and leaves out attention's sequence term (~5% at these lengths): read MFU as +-15%.
   Then the ReMax paper's memory claim: ReMax / PPO peak GPU memory per strategy (the paper reports ~46% less
   for ReMax on 7B, against a PPO with a separate critic model; lit-rl's PPO critic is a linear head on the
   policy's trunk, so the gap measured here is what lit-rl's two implementations cost, not the paper's).
   One markdown table on stdout, everything in ``--out`` (JSON), each subprocess's log in ``<out>_logs/``.

Time budget (the run must stay under 8 minutes on one H200): the whole run stops at ``--budget`` (450 s). Each
strategy's subprocess gets a share of what is left, weighted by its expected cost (``COST``), so a strategy
that finishes early leaves its time to the next; one stopped at its share reports its unfinished algorithms as
FAILED, and the table always prints. Expected, with the defaults (16 prompts x 4 samples x 64 new tokens =
64 sequences, 2 steps): building the model ~10 s; a subprocess starts in ~12 s (imports, CUDA); an algorithm
loads in ~3 s (~5 s with ``deepspeed.initialize``); HF ``generate`` at ~20 ms per decode step (launch-bound
at this size, so 64 rows cost what 32 do) makes a rollout ~1.3 s, forward + backward + optimizer ~0.3 s, so a
step is ~2 s (ReMax decodes twice; ERPD samples four times over its two steps, its stage evaluations
included). ``none``: 6 x 7 s + 5 s (ReMax's and ERPD's extra decodes) + 6 x 4 s float32 replays (no decode)
+ 12 s = ~80 s; ``fsdp2`` ~70 s; ``zero2`` ~75 s; ``zero3`` ~150 s (ZeRO-3 gathers each layer's weights at
every decode step: ~4x slower generation). Total ~6.5 minutes. The decode dominates and grows with the
length: ``--length 128`` is ~9 minutes, past the budget (ZeRO-3's last algorithms would be cut).

What it cannot check: more than one GPU (every strategy here runs ``devices=1``, so nothing is sharded across
ranks and no collective crosses a link: tests/test_distributed.py covers 2 ranks on CPU); learning (2 steps of a
random model); vLLM; LoRA; the memory of a real 7B model (the ReMax claim is checked on this model only); the
throughput of a real tokenizer's prompt lengths (Countdown prompts are ~65 characters = tokens here, ~20 in
Qwen's tokenizer).
"""

import argparse
import functools
import gc
import importlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from lightning.pytorch import Callback, Trainer  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from torch import Tensor  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from lit_rl import (  # noqa: E402
    DPO, ERPD, GRPO, PPO, RLOO, CountdownData, CountdownReward, Generation, HFEngine, ReMax, RLModule, RolloutBatch,
    RolloutEngine, Sampling, Teacher,
)
from lit_rl.losses import ImplicitRewardCE  # noqa: E402
from lit_rl.tasks.countdown import ALPHABET, WORDS  # noqa: E402
from lit_rl.tokenizer import EOS, PAD, PLAIN_TEMPLATE  # noqa: E402

ALGORITHMS = ("grpo", "remax", "rloo", "ppo", "dpo", "erpd")        # the table's order
RUN_ORDER = ("remax", "ppo", "grpo", "rloo", "dpo", "erpd")         # the memory claim's pair first
STRATEGIES = ("none", "fsdp2", "zero2", "zero3")
STRATEGY_CONFIGS = {"fsdp2": "fsdp.yaml", "zero2": "deepspeed_zero2.yaml", "zero3": "deepspeed_zero3.yaml"}
DEEPSPEED = ("zero2", "zero3")
COST = {"none": 1.1, "fsdp2": 0.9, "zero2": 1.0, "zero3": 2.0}      # expected relative wall time (docstring)
QWEN25_05B = {"vocab": 151936, "hidden": 896, "intermediate": 4864, "layers": 24, "heads": 14, "kv_heads": 2}
TINY = {"vocab": 512, "hidden": 128, "intermediate": 256, "layers": 2, "heads": 2, "kv_heads": 1}
GPU_SIZES = {"prompts": 16, "group": 4, "length": 64, "steps": 2}
CPU_SIZES = {"prompts": 2, "group": 2, "length": 8, "steps": 2}
LOSS_RTOL, LOSS_FLOOR = 2e-2, 1e-3                                  # bf16 vs float32 (docstring, item 4)
GRAD_RTOL, GRAD_FLOOR = 5e-2, 1e-6


# ------------------------------------------------------------------------------------------ the model
def build_tokenizer(vocab: int):
    """Countdown's characters and answer tags, then filler words up to ``vocab`` (half end in a space)."""
    known = list(dict.fromkeys([PAD, EOS, *WORDS, *ALPHABET]))
    fillers = [f"w{i}" + " " * (i % 2) for i in range(vocab - len(known))]
    tok = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(known + fillers)}, unk_token=PAD))
    pattern = "|".join([*map(re.escape, WORDS), "."])                   # encoding never yields a filler
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, padding_side="left")
    tokenizer.chat_template = PLAIN_TEMPLATE
    return tokenizer


def build_model(out_dir: Path, vocab: int, hidden: int, intermediate: int, layers: int, heads: int,
                kv_heads: int, seed: int = 0) -> tuple[Path, int]:
    """A random Qwen2-shaped model and its tokenizer saved (bf16) to ``out_dir``; its parameter count."""
    tokenizer = build_tokenizer(vocab)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         head_dim=64, attention_bias=True, max_position_embeddings=32768, rope_theta=1e6,
                         tie_word_embeddings=True, rms_norm_eps=1e-6, bos_token_id=tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir, sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------- what a run records
class Recorder(Callback):
    """What a run logged, read at the source: the module's ``log`` is wrapped, so a training step's metrics are
    exactly those logged in it (Lightning's logged metrics keep a key's value from an earlier step when a step
    does not log it) and every optimizer step's ``train/loss`` and ``train/grad_norm`` is kept (PPO's two passes
    log two a step). Its ``micro_loss`` is wrapped to count the real (not padding) prompt + completion tokens
    of each micro-batch: every algorithm's forward and backward goes through it."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.optimizer_steps: dict[str, list[float]] = {"train/loss": [], "train/grad_norm": []}
        self.current: dict[str, float] = {"train/tokens": 0}

    def watch(self, module: RLModule) -> None:
        micro_loss, log = module.micro_loss, module.log

        def counted(micro: RolloutBatch, normalisers: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
            self.current["train/tokens"] += int(micro.prompt_mask.sum() + micro.completion_mask.sum())
            return micro_loss(micro, normalisers)

        def logged(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
            if isinstance(value, (int, float, Tensor)):                 # not a torchmetrics Metric
                self.current[name] = float(value)
                if name in self.optimizer_steps:
                    self.optimizer_steps[name].append(float(value))
            log(name, value, *args, **kwargs)

        module.micro_loss, module.log = counted, logged

    def on_train_batch_end(self, trainer: Trainer, pl_module: RLModule, *args: Any) -> None:
        self.steps.append(self.current)
        self.current = {"train/tokens": 0}


class RecordingEngine(HFEngine):
    """HF sampling that keeps every generation, so the float32 run can replay the very same rollouts."""

    def __init__(self) -> None:
        super().__init__()
        self.generations: list[Generation] = []

    def generate(self, prompt_ids: Tensor, prompt_mask: Tensor, sampling: Sampling, n: int = 1) -> Generation:
        out = super().generate(prompt_ids, prompt_mask, sampling, n)
        self.generations.append(Generation(out.completion_ids.cpu(), out.completion_mask.cpu()))
        return out


class ReplayEngine(RolloutEngine):
    """Returns recorded generations in their order instead of sampling."""

    def __init__(self, generations: list[Generation]) -> None:
        self.queue = list(generations)

    def bind(self, model: torch.nn.Module, tokenizer: Any) -> None:
        pass

    def generate(self, prompt_ids: Tensor, prompt_mask: Tensor, sampling: Sampling, n: int = 1) -> Generation:
        if not self.queue:
            raise RuntimeError("the float32 run asked for more generations than the bf16 run made")
        g = self.queue.pop(0)
        return Generation(g.completion_ids.to(prompt_ids.device), g.completion_mask.to(prompt_ids.device))


# ----------------------------------------------------------------------------------- one training run
def strategy_settings(strategy: str) -> tuple[Any, str, dict[str, Any]]:
    """The Trainer's strategy and precision, and the module settings, of a strategy's shipped config."""
    if strategy == "none":
        return "auto", "bf16-mixed", {}
    config = yaml.safe_load((ROOT / "cli_configs" / "strategies" / STRATEGY_CONFIGS[strategy]).read_text())
    spec = config["trainer"]["strategy"]
    module_name, _, class_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return (cls(**spec.get("init_args", {})), config["trainer"].get("precision", "bf16-mixed"),
            config.get("model", {}).get("init_args", {}))


def make_module(algorithm: str, model: str, dtype: str, engine: RolloutEngine, overrides: dict[str, Any],
                args) -> RLModule:
    settings = {"model": model, "dtype": dtype, "engine": engine, "group_size": args.group,
                "reward": CountdownReward(scheme="A"),
                "sampling": Sampling(temperature=1.0, max_new_tokens=args.length),
                "optimizer": functools.partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.0), **overrides}
    if algorithm == "erpd":                                             # one teacher step, one student step
        teacher = Teacher(loss=ImplicitRewardCE(beta=0.05), epochs=1, mini_batch_size=args.prompts * args.group)
        return ERPD(teachers=[teacher], student_steps=1, eval_size=0, **settings)
    return {"grpo": GRPO, "remax": ReMax, "rloo": RLOO, "ppo": PPO, "dpo": DPO}[algorithm](**settings)


def train(algorithm: str, strategy: str, dtype: str, engine: RolloutEngine, recorder: Recorder, args,
          batches: int | None = None, precision: str | None = None) -> int:
    """``args.steps`` training steps (or the first ``batches``) of one algorithm; its policy's parameter count."""
    strategy_obj, strategy_precision, overrides = strategy_settings(strategy)
    lightning.seed_everything(args.seed, verbose=False)
    module = make_module(algorithm, args.model, dtype, engine, overrides, args)
    recorder.watch(module)
    params = sum(p.numel() for p in module.policy.model.parameters())
    # The same prompts in both precisions: one epoch of exactly args.steps batches, the float32 run its first.
    data = CountdownData(batch_size=args.prompts, train_size=args.prompts * args.steps, val_size=1, seed=args.seed)
    with tempfile.TemporaryDirectory() as root:
        trainer = Trainer(accelerator="cpu" if args.cpu_dry_run else "gpu", devices=1, strategy=strategy_obj,
                          precision=precision or strategy_precision, max_epochs=1, limit_train_batches=batches,
                          logger=False, callbacks=[recorder], enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                          default_root_dir=root)
        trainer.fit(module, datamodule=data)
    return params


def error_line(err: BaseException) -> str:
    return traceback.format_exception_only(err)[-1].strip()


def close(a: float | None, b: float | None, rtol: float, floor: float) -> bool:
    return a is not None and b is not None and abs(a - b) <= rtol * max(abs(b), floor)


def compare(bf16: Recorder, fp32: Recorder) -> dict[str, Any]:
    """The first optimizer step's loss and gradient norm, bf16 against float32 (tolerances: docstring, item 4)."""
    out: dict[str, Any] = {}
    for key, name, rtol, floor in (("train/loss", "loss", LOSS_RTOL, LOSS_FLOOR),
                                   ("train/grad_norm", "grad_norm", GRAD_RTOL, GRAD_FLOOR)):
        a, b = (r.optimizer_steps[key][0] if r.optimizer_steps[key] else None for r in (bf16, fp32))
        rel_diff = None if a is None or b is None else abs(a - b) / max(abs(b), floor)
        out[name] = {"bf16": a, "fp32": b, "rel_diff": rel_diff, "ok": close(a, b, rtol, floor)}
    out["ok"] = out["loss"]["ok"] and out["grad_norm"]["ok"]
    return out


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(steps: list[dict[str, float]], params: int | None, args) -> dict[str, Any]:
    """Time, throughput and MFU over the steps after the warm-up step."""
    measured = steps[1:] or steps

    def avg(key: str) -> float | None:
        return mean([s[key] for s in measured if key in s])

    tokens = sum(s["train/tokens"] for s in measured if "time/forward_backward" in s)
    fb_seconds = sum(s["time/forward_backward"] for s in measured if "time/forward_backward" in s)
    train_tps = tokens / fb_seconds if fb_seconds else None
    mfu = (6 * params * train_tps / (args.peak_tflops * 1e12)
           if train_tps and params and not args.cpu_dry_run else None)
    return {"time_step": avg("time/step"), "time_generate": avg("time/generate"),
            "time_forward_backward": avg("time/forward_backward"), "gen_tokens_per_s": avg("rollout/tokens_per_s"),
            "train_tokens_per_s": train_tps, "mfu": mfu, "measured_steps": len(measured)}


def check(algorithm: str, strategy: str, args) -> dict[str, Any]:
    """One (strategy, algorithm): the bf16 run, its checks and figures, and under ``none`` the float32 replay."""
    cuda = not args.cpu_dry_run
    row: dict[str, Any] = {"strategy": strategy, "algorithm": algorithm, "status": "OK", "error": None,
                           "completed": False}
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        leftover = torch.cuda.memory_allocated()                        # an earlier algorithm's, not this one's
    bf16, engine = Recorder(), RecordingEngine()
    try:
        row["params"] = train(algorithm, strategy, "float32", engine, bf16, args)    # computed in bf16
        row["completed"] = True                                         # every step ran (checks may still fail)
    except Exception as err:
        row.update(status="FAILED", error=error_line(err), traceback=traceback.format_exc()[-3000:])
    row["peak_gib"] = (torch.cuda.max_memory_allocated() - leftover) / 2**30 if cuda else None
    losses, grad_norms = bf16.optimizer_steps["train/loss"], bf16.optimizer_steps["train/grad_norm"]
    row.update(summarise(bf16.steps, row.get("params"), args), steps=bf16.steps, losses=losses, grad_norms=grad_norms,
               loss_finite=bool(losses) and all(map(math.isfinite, losses)))
    if row["grad_norms"] and not any(row["grad_norms"]):
        row["warning"] = "train/grad_norm is 0 at every step: the module's norm saw no gradients"
    if row["status"] == "OK" and not row["loss_finite"]:
        row.update(status="FAILED", error=f"train/loss not finite: {losses}" if losses else "no train/loss was logged")
    if strategy == "none" and row["status"] == "OK":
        fp32 = Recorder()
        try:
            train(algorithm, strategy, "float32", ReplayEngine(engine.generations), fp32, args, batches=1,
                  precision="32-true")
        except Exception as err:
            row["fp32_error"] = error_line(err)                       # a first step recorded still compares
        row["fp32"] = compare(bf16, fp32) if fp32.optimizer_steps["train/loss"] else None
        if row["fp32"] is None:
            row.update(status="FAILED", error=f"the float32 run logged no loss: {row.get('fp32_error')}")
        elif not row["fp32"]["ok"]:
            row.update(status="FAILED", error="bf16 step 1 does not track float32: " + "; ".join(
                f"{name} {fmt(c['bf16'], '.4g')} vs {fmt(c['fp32'], '.4g')}" for name, c in row["fp32"].items()
                if name != "ok"))
    return row


def child(args) -> None:
    """One strategy's subprocess: every algorithm in turn, each row appended to ``--rows`` as it is done."""
    for algorithm in sorted(args.algorithms, key=RUN_ORDER.index):
        row = check(algorithm, args.child, args)
        with open(args.rows, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"GPU_CHECK {args.child} {algorithm}: {row['status']} {row['error'] or ''}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ the parent
def run_strategy(strategy: str, args, timeout: float, logs: Path) -> list[dict[str, Any]]:
    rows_file, log = logs / f"{strategy}.jsonl", logs / f"{strategy}.log"
    rows_file.unlink(missing_ok=True)
    flags = ["--algorithms", *args.algorithms, "--steps", str(args.steps), "--prompts", str(args.prompts),
             "--group", str(args.group), "--length", str(args.length), "--lr", str(args.lr), "--seed", str(args.seed),
             "--peak-tflops", str(args.peak_tflops), *(["--cpu-dry-run"] if args.cpu_dry_run else [])]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", strategy, "--model", args.model,
           "--rows", str(rows_file), *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    failure = None
    with log.open("w") as f:
        try:
            code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code, failure = None, f"the {strategy} process was stopped at its {timeout:.0f} s share of --budget"
    if code:                                                            # a crash: name its error if it printed one
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if re.search(r"Error|Exception|Killed|Abort|Segmentation", line)]
        failure = f"the {strategy} process exited with code {code}"
        failure += f": {(errors or lines)[-1][:300]}" if lines else ""
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()] if rows_file.exists() else []
    done = {row["algorithm"] for row in rows}
    return rows + [{"strategy": strategy, "algorithm": a, "status": "FAILED", "error": failure or "no result"}
                   for a in args.algorithms if a not in done]


def remax_vs_ppo(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """ReMax / PPO peak GPU memory per strategy where both ran every step (a failed check leaves the memory
    figure standing; the paper: ~46% less for ReMax on 7B)."""
    peaks = {(r["strategy"], r["algorithm"]): r.get("peak_gib") for r in rows if r.get("completed")}
    out = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        remax, ppo = peaks.get((strategy, "remax")), peaks.get((strategy, "ppo"))
        if remax and ppo:
            out[strategy] = {"remax_gib": remax, "ppo_gib": ppo, "ratio": remax / ppo, "saving": 1 - remax / ppo}
    return out


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(rows: list[dict[str, Any]]) -> str:
    head = ["strategy", "algorithm", "status", "s/step", "generate s", "fwd+bwd s", "gen tok/s", "train tok/s",
            "peak GiB", "MFU", "loss, grad norm (step 1)", "bf16 vs fp32 (rel. diff)", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        fp32 = r.get("fp32")
        vs = (f"{fmt(fp32['loss']['rel_diff'], '.1e')}, {fmt(fp32['grad_norm']['rel_diff'], '.1e')}"
              f"{'' if fp32['ok'] else ' MISMATCH'}") if fp32 else "n/a"
        first = [values[0] for values in (r.get("losses"), r.get("grad_norms")) if values]
        note = (r.get("error") or r.get("warning") or "").replace("|", "/")[:160]
        lines.append("| " + " | ".join([
            r["strategy"], r["algorithm"], r["status"], fmt(r.get("time_step"), ".2f"),
            fmt(r.get("time_generate"), ".2f"),
            fmt(r.get("time_forward_backward"), ".3f"), fmt(r.get("gen_tokens_per_s"), ".0f"),
            fmt(r.get("train_tokens_per_s"), ".0f"), fmt(r.get("peak_gib"), ".2f"),
            fmt(None if r.get("mfu") is None else 100 * r["mfu"], ".1f") + ("%" if r.get("mfu") is not None else ""),
            ", ".join(format(v, ".4g") for v in first) or "n/a", vs, note]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algorithms", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--steps", type=int, help="training steps per run, the first is warm-up (default 2)")
    parser.add_argument("--prompts", type=int, help="prompts per step (default 16; dry run 2)")
    parser.add_argument("--group", type=int, help="samples per prompt (default 4; dry run 2)")
    parser.add_argument("--length", type=int, help="new tokens per sample (default 64; dry run 8)")
    parser.add_argument("--lr", type=float, default=1e-6, help="AdamW learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H200: 989)")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run (see the docstring)")
    parser.add_argument("--out", default="gpu_check.json")
    parser.add_argument("--cpu-dry-run", action="store_true", help="CPU, a tiny model, strategies none and fsdp2 work")
    parser.add_argument("--child", choices=STRATEGIES, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--rows", help=argparse.SUPPRESS)
    args = parser.parse_args()
    for key, value in (CPU_SIZES if args.cpu_dry_run else GPU_SIZES).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.steps, args.prompts, args.length) < 1 or args.group < 2:
        parser.error("--steps, --prompts and --length must be >= 1 and --group >= 2 (GRPO, RLOO, DPO, ERPD)")
    if args.child:
        return child(args)

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_dry_run:
        parser.error("no CUDA device: run on the GPU machine, or with --cpu-dry-run")
    deepspeed_ok = cuda and not args.cpu_dry_run and importlib.util.find_spec("deepspeed") is not None
    start, out = time.monotonic(), Path(args.out).resolve()      # the children run in ROOT
    logs = out.with_name(out.stem + "_logs")
    logs.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model, params = build_model(Path(tmp) / "model", **(TINY if args.cpu_dry_run else QWEN25_05B), seed=args.seed)
        args.model = str(model)
        shape = "tiny, CPU dry run" if args.cpu_dry_run else "Qwen2.5-0.5B shape"
        print(f"model: {params / 1e6:.1f}M parameters ({shape}); {args.prompts} prompts x {args.group} samples x "
              f"{args.length} new tokens, {args.steps} steps", flush=True)
        to_run = [s for s in args.strategies if s not in DEEPSPEED or deepspeed_ok]
        for strategy in args.strategies:
            if strategy not in to_run:
                rows += [{"strategy": strategy, "algorithm": a, "status": "SKIPPED",
                          "error": "skipped: needs CUDA and deepspeed"} for a in args.algorithms]
                continue
            left = to_run[to_run.index(strategy):]
            share = (args.budget - (time.monotonic() - start)) * COST[strategy] / sum(COST[s] for s in left)
            print(f"{strategy}: {len(args.algorithms)} algorithms, up to {share:.0f} s", flush=True)
            rows += run_strategy(strategy, args, max(share, 1.0), logs)
            for r in rows[-len(args.algorithms):]:
                print(f"  {r['algorithm']}: {r['status']} {r.get('error') or ''}", flush=True)
    order = {(s, a): i for i, (s, a) in enumerate((s, a) for s in STRATEGIES for a in ALGORITHMS)}
    rows.sort(key=lambda r: order[r["strategy"], r["algorithm"]])
    memory = remax_vs_ppo(rows)
    settings = ("prompts", "group", "length", "steps", "lr", "seed", "peak_tflops", "budget")
    report = {"model_parameters": params, "device": "cpu" if args.cpu_dry_run else torch.cuda.get_device_name(),
              "settings": {k: getattr(args, k) for k in settings},
              "tolerances": {"loss_rtol": LOSS_RTOL, "loss_floor": LOSS_FLOOR, "grad_norm_rtol": GRAD_RTOL,
                             "grad_norm_floor": GRAD_FLOOR},
              "seconds": time.monotonic() - start, "rows": rows, "remax_vs_ppo": memory}
    out.write_text(json.dumps(report, indent=1))
    print()
    print(table(rows))
    print()
    for strategy, m in memory.items():
        print(f"ReMax / PPO peak GPU memory ({strategy}): {m['ratio']:.2f} "
              f"({m['remax_gib']:.2f} vs {m['ppo_gib']:.2f} GiB, "
              f"ReMax {100 * m['saving']:+.0f}% less; the ReMax paper: ~46% less on 7B, against a separate critic)")
    if not memory:
        print("ReMax / PPO peak GPU memory: n/a" + (" on CPU" if args.cpu_dry_run else " (one of them did not run)"))
    print(f"\n{len(rows)} rows in {time.monotonic() - start:.0f} s -> {out}")


if __name__ == "__main__":
    main()
