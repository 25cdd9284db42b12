"""``lit-rl generate``: sample ``G`` completions per prompt, score them, and store them as an offline dataset.

Every row is one completion: ``prompt_index``, ``sample_index``, ``prompt``, ``meta``, ``completion``,
``prompt_ids``, ``completion_ids``, ``reward``, ``correct``, ``behaviour_logps`` (per token) and
``behaviour_logp`` (their sum), ``sampling``, ``model`` and ``seed``. Rows are appended to ``<output>.jsonl``
one batch of prompts at a time; ``<output>.parquet`` is written at the end. Batch ``b`` is sampled under the
seed ``(seed, b)``, so a run is deterministic, and an interrupted run resumes after its last complete batch
without duplicating rows. ``<output>.settings.json`` records every setting that changes the rows (model, seed,
sampling, group_size, batch_size, dtype, reward, data, engine); a rerun with any other value is refused by name.
"""

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule

from lit_rl.chat import ChatTemplate
from lit_rl.checkpointing import atomic_write
from lit_rl.collect import Sampler, SingleTurn
from lit_rl.policy import Policy
from lit_rl.resume import describe, describe_differences, differences
from lit_rl.rewards import RewardFunction
from lit_rl.rollout import HFEngine, RolloutEngine, Sampling


def _check_settings(path: Path, record_path: Path, record: dict) -> None:
    """Refuse to append to rows generated with other settings, naming each one that differs."""
    if not record_path.is_file():
        raise ValueError(f"{path} holds rows but no record of the settings that generated them ({record_path.name} "
                         f"is missing: an older lit-rl, or a copied file), so they cannot be checked against this "
                         f"run's; choose another output or delete {path}")
    saved = json.loads(record_path.read_text())
    if diffs := differences(saved, record, tuple(sorted(set(saved) | set(record)))):
        raise ValueError(f"{path} was generated with other settings; appending would mix two datasets:\n"
                         f"{describe_differences(diffs, 'the file')}\n"
                         f"choose another output or delete {path}")


def _complete_batches(path: Path, record_path: Path, record: dict, batch_rows: list[int]) -> int:
    """How many batches ``path`` already holds in full; the rest (a crash's partial batch) is cut off. Rows are
    kept only if ``record_path`` shows they were generated with the same settings (``record``)."""
    lines = path.read_bytes().split(b"\n") if path.exists() else []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    if rows:
        _check_settings(path, record_path, record)
    else:                                                               # written before any row
        atomic_write(record_path, lambda f: f.write(json.dumps(record, indent=1).encode()))
    if not path.exists():
        return 0
    complete, kept_rows = 0, 0
    while complete < len(batch_rows) and kept_rows + batch_rows[complete] <= len(rows):
        kept_rows += batch_rows[complete]
        complete += 1
    with path.open("r+b") as f:
        f.truncate(sum(len(line) + 1 for line in lines[:kept_rows]))
    return complete


def generate(
    model: str,
    data: LightningDataModule,
    reward: RewardFunction,
    output: str = "runs/offline/rollouts",
    engine: RolloutEngine | None = None,
    sampling: Sampling = Sampling(temperature=1.0, max_new_tokens=32),
    group_size: int = 4,
    num_prompts: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    dtype: str = "float32",
    chat_template: ChatTemplate = "auto",
    system_prompt: str | None = None,
    chat_template_kwargs: dict | None = None,
) -> Path:
    """Generate an offline dataset of scored rollouts.

    Args:
        model: the behaviour policy (local directory, hub id or ``builtin:NAME``).
        data: a DataModule with ``train_rows`` (dicts with ``prompt`` and ``meta``), e.g. ``lit_rl.PromptData``.
        reward: scores the completions.
        output: path without extension; ``.jsonl`` and ``.parquet`` are written.
        engine: the rollout engine; default ``HFEngine``.
        sampling: decoding settings; behaviour log-probs are taken at its temperature (untruncated).
        group_size: completions per prompt.
        num_prompts: how many of the data's training prompts to use (all if null).
        batch_size: prompts per generation batch (the unit of resumption).
        seed: sampling seed.
        dtype: the dtype the model is loaded in.
        chat_template, system_prompt, chat_template_kwargs: how prompts are rendered (as in ``PolicyModule``).
    """
    if group_size < 1 or batch_size < 1:
        raise ValueError(f"group_size and batch_size must be >= 1 (got {group_size}, {batch_size})")
    data.setup("fit")
    if not hasattr(data, "train_rows"):
        raise TypeError(f"{type(data).__name__} has no train_rows: generate needs prompts with their metadata")
    policy = Policy.load(model, dtype).eval()
    chat = {"chat_template": chat_template, "system_prompt": system_prompt, "chat_template_kwargs": chat_template_kwargs}
    engine = engine if engine is not None else HFEngine()
    sampler = Sampler(policy, engine, reward, chat=chat)
    if getattr(data, "filter_long", False):
        data.drop_long(lambda p: sampler.prompt_fits(p, sampling.max_new_tokens))
    prompts = data.train_rows[:num_prompts]
    # In every row, as JSON stores it (a tuple of stop strings reads back as a list).
    settings = json.loads(json.dumps({"model": model, "seed": seed, "sampling": asdict(sampling)}))
    # Everything that changes the rows (num_prompts only says how many there are: a rerun may extend them).
    record = json.loads(json.dumps({**settings, "group_size": group_size, "batch_size": batch_size, "dtype": dtype,
                                    "chat": chat, "reward": describe(reward), "data": describe(data),
                                    "engine": describe(engine)}))
    engine.bind(policy.model, policy.tokenizer)

    jsonl, parquet = Path(f"{output}.jsonl"), Path(f"{output}.parquet")
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    starts = list(range(0, len(prompts), batch_size))
    batch_rows = [len(prompts[s:s + batch_size]) * group_size for s in starts]
    first = _complete_batches(jsonl, Path(f"{output}.settings.json"), json.loads(json.dumps(record)), batch_rows)
    start_time = time.perf_counter()
    with jsonl.open("a") as f:
        for b in range(first, len(starts)):
            torch.manual_seed(seed * 1_000_003 + b)
            rows = prompts[starts[b]:starts[b] + batch_size]
            f.write("".join(json.dumps(r) + "\n" for r in _batch_rows(sampler, sampling, group_size, rows, starts[b],
                                                                      settings)))
            f.flush()
            print(f"generate: prompts {starts[b] + len(rows)}/{len(prompts)}", flush=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    atomic_write(parquet, lambda f: pq.write_table(pa.Table.from_pylist(rows), f))
    rewards = torch.tensor([r["reward"] for r in rows])
    judged = [r["correct"] for r in rows if r["correct"] is not None]
    accuracy = f", accuracy {sum(judged) / len(judged):.3f}" if judged else ""
    print(f"generate: {len(rows)} rows ({len(prompts)} prompts x {group_size}) in {jsonl} and {parquet}: "
          f"mean reward {rewards.mean():.3f}{accuracy}, {time.perf_counter() - start_time:.0f} s")
    return jsonl


@torch.no_grad()
def _batch_rows(sampler: Sampler, sampling: Sampling, group_size: int, rows: list[dict], first_index: int,
                settings: dict) -> list[dict]:
    """One batch of prompts' rows: the single-turn collector's samples, with the behaviour log-probs the engine
    returned or, when it returns none, the policy's at the sampling temperature. A reward is stored as training
    reads it, in float32, written as the shortest decimal that gives that float32 back (0.1, not 0.100000001)."""
    rollout = SingleTurn().collect(sampler, [r["prompt"] for r in rows], [r["meta"] for r in rows], sampling, group_size)
    logps = rollout.behaviour_logps
    if logps is None:
        logps = sampler.policy.logps(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                                     rollout.completion_mask, sampling.logit_temperature)[0]
    out = []
    for k, text in enumerate(rollout.texts):
        p, length = k // group_size, int(rollout.completion_mask[k].sum())
        token_logps = logps[k, :length].tolist()
        correct = None if (c := float(rollout.correct[k])) != c else bool(c)             # NaN: not judged
        out.append({"prompt_index": first_index + p, "sample_index": k % group_size, "prompt": rows[p]["prompt"],
                    "meta": rows[p]["meta"], "completion": text,
                    "prompt_ids": rollout.prompt_ids[k][rollout.prompt_mask[k].bool()].tolist(),
                    "completion_ids": rollout.completion_ids[k, :length].tolist(),
                    "reward": float(str(rollout.scores[k].cpu().numpy())), "correct": correct,
                    "behaviour_logps": token_logps, "behaviour_logp": sum(token_logps), **settings})
    return out


def main(args: list[str] | None = None) -> None:
    from jsonargparse import auto_cli

    from lit_rl.cli_errors import GenerateParser

    auto_cli(generate, args=args, parser_class=GenerateParser, prog="lit-rl generate")
