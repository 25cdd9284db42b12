"""Does the built-in Countdown model use ``CountdownFeedback``? Held-out accuracy with up to N attempts, no training.

    python benchmarks/countdown_feedback_probe.py            # --model builtin:countdown-sft --size 200 --attempts 3

For each observation wording, greedy and sampled (temperature 1): every held-out puzzle of ``CountdownData`` (the
settings of ``cli_configs/remax.yaml``) is rendered with ``render_prompt``, the model answers (``max_new_tokens``
32, up to its EOS), and while the environment says the answer misses, its observation's tokens are appended after
the model's (EOS included) and the model answers again, up to ``--attempts`` answers. Printed per run: accuracy
after 1, 2, ... attempts; ``same``: the share of retries that repeat the episode's previous answer word for word; ``bad``: the share of
retries that are invalid or have no answer; ``tokens``: the longest episode (the model was trained on one prompt
and one answer, under 90 tokens; its ``max_position_embeddings`` is 256). Wordings:

- ``verdict``: ``CountdownFeedback()``: ``= 17, not 23.`` (or ``invalid answer.``, ``no answer.``);
- ``restate``: ``CountdownFeedback(restate=True)``: the verdict, then the puzzle's prompt again;
- ``prompt``: the prompt again without the verdict (a control: what the verdict itself adds).

``independent`` is the reference without feedback: the share of puzzles solved by any of N independent samples
of the first prompt (pass@N; greedy would repeat itself).
"""

import argparse

import torch

from lit_rl import CountdownData, CountdownFeedback, HFEngine, Policy, Sampling, render_prompt
from lit_rl.environment import EnvStep
from lit_rl.tasks.countdown import verify


class PromptAgain(CountdownFeedback):
    """The control wording: the prompt again, no verdict."""

    def step(self, completion: str) -> EnvStep:
        result = super().step(completion)
        return result if result.done else EnvStep(self.prompt, result.reward, False, False)


WORDINGS = {"verdict": CountdownFeedback, "restate": lambda: CountdownFeedback(restate=True),
            "prompt": lambda: PromptAgain(restate=True)}


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, sequences))
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in sequences])                   # [B, P]
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])           # [B, P]
    return ids, mask


def episodes(policy: Policy, engine: HFEngine, rows: list[dict], wording: str, sampling: Sampling,
             attempts: int) -> dict[str, object]:
    """Run every row's episode; accuracy after each attempt, the shares of retries that repeat the previous answer
    and that are malformed (invalid or no answer), the longest episode in tokens."""
    tokenizer = policy.tokenizer
    encode = lambda text: tokenizer(text, add_special_tokens=False).input_ids                  # noqa: E731
    envs = [WORDINGS[wording]() for _ in rows]
    for env, row in zip(envs, rows):
        env.reset(row["prompt"], row["meta"])
    ids = [encode(render_prompt(tokenizer, row["prompt"])) for row in rows]
    last: list[str | None] = [None] * len(rows)
    solved_at = [None] * len(rows)
    active, repeats, malformed, retries = list(range(len(rows))), 0, 0, 0
    for attempt in range(1, attempts + 1):
        if not active:
            break
        generation = engine.generate(*left_pad([ids[i] for i in active], tokenizer.pad_token_id), sampling)
        for row, tokens, mask in zip(active, generation.completion_ids.tolist(), generation.completion_mask.tolist()):
            tokens = tokens[:sum(mask)]                                                        # up to its EOS
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            if attempt > 1:
                retries, repeats = retries + 1, repeats + (text == last[row])
                malformed += verify(text, envs[row].numbers, envs[row].target) in ("invalid", "no_answer")
            last[row] = text
            result = envs[row].step(text)
            ids[row] = ids[row] + tokens
            if result.done:
                solved_at[row] = attempt
            elif attempt < attempts:                                                           # the model reads it
                ids[row] = ids[row] + encode(result.observation)
        active = [i for i in active if solved_at[i] is None]
    accuracy = [sum(s is not None and s <= k for s in solved_at) / len(rows) for k in range(1, attempts + 1)]
    return {"accuracy": accuracy, "same": repeats / max(retries, 1), "malformed": malformed / max(retries, 1),
            "tokens": max(map(len, ids))}


def independent(policy: Policy, engine: HFEngine, rows: list[dict], attempts: int, max_new_tokens: int) -> float:
    """pass@attempts: the share of puzzles that any of ``attempts`` independent samples (temperature 1) solves."""
    tokenizer = policy.tokenizer
    ids, mask = left_pad([tokenizer(render_prompt(tokenizer, r["prompt"]), add_special_tokens=False).input_ids
                          for r in rows], tokenizer.pad_token_id)
    generation = engine.generate(ids, mask, Sampling(temperature=1.0, max_new_tokens=max_new_tokens), n=attempts)
    texts = tokenizer.batch_decode(generation.completion_ids, skip_special_tokens=True)
    solved = [any(verify(texts[i * attempts + j], r["meta"]["numbers"], r["meta"]["target"]) == "correct"
                  for j in range(attempts)) for i, r in enumerate(rows)]
    return sum(solved) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:countdown-sft")
    parser.add_argument("--size", type=int, default=200, help="held-out puzzles")
    parser.add_argument("--attempts", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--wordings", nargs="+", default=list(WORDINGS), choices=list(WORDINGS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    policy = Policy.load(args.model)
    engine = HFEngine()
    engine.bind(policy.model, policy.tokenizer)
    data = CountdownData(val_size=args.size, num_numbers=3, max_number=20, template="paper")
    data.setup()
    rows = data.val_rows
    print(f"{args.model}, {len(rows)} held-out puzzles, up to {args.attempts} attempts, "
          f"max_new_tokens {args.max_new_tokens}, seed {args.seed}")
    header = " ".join(f"{'@' + str(k):>6}" for k in range(1, args.attempts + 1))
    print(f"{'wording':<10} {'decoding':<8} {header} {'same':>6} {'bad':>6} {'tokens':>6}")
    for wording in args.wordings:
        for name, temperature in (("greedy", 0.0), ("sampled", 1.0)):
            torch.manual_seed(args.seed)
            result = episodes(policy, engine, rows, wording,
                              Sampling(temperature=temperature, max_new_tokens=args.max_new_tokens), args.attempts)
            accuracy = " ".join(f"{a:>6.3f}" for a in result["accuracy"])
            print(f"{wording:<10} {name:<8} {accuracy} {result['same']:>6.3f} {result['malformed']:>6.3f} "
                  f"{result['tokens']:>6}")
    torch.manual_seed(args.seed)
    print(f"independent sampled pass@{args.attempts}: "
          f"{independent(policy, engine, rows, args.attempts, args.max_new_tokens):.3f}")


if __name__ == "__main__":
    main()
