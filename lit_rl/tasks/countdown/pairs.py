"""Preference pairs for a Countdown reward model, chosen for what they teach a judge of arithmetic.

From scored rollouts (``lit-rl generate``), within each prompt:

- ``sampled``: every correct sample against every distinct sample that is not (the mistakes the policy makes);
- ``solution``: a solution of the puzzle (found by search) against every sample that is not correct, so prompts
  the policy never solves teach too;
- ``minimal``: a correct answer against its corruptions one edit away, which only arithmetic or counting tells
  apart: one operator changed (the value changes, the look does not), one number replaced by another of the
  puzzle (a number used twice), a number appended again (``... + (3)``, how a policy over-optimised against a
  reward model that never saw these cheats), one number dropped;
- ``valid_wrong`` and ``target_swap``: the correct answer against a well-formed answer of another value, and the
  same two answers the other way round for the prompt whose target is that value: only the target tells the two
  pairs apart, so a judge that ignores it (e.g. "sums are right") gets one of them wrong.

Written as ``prompt``/``chosen``/``rejected`` rows with ``prompt_index`` (``OfflineData(val_fraction=...)`` holds
out whole prompts) and ``kind``:

    python -m lit_rl.tasks.countdown.pairs ROLLOUTS OUT.parquet [--seed 0]
"""

import argparse
import itertools
import random
import re
from fractions import Fraction
from typing import Any

from lit_rl.tasks.countdown.puzzles import TEMPLATES
from lit_rl.tasks.countdown.verify import extract_answer, verify

OPS = "+-*/"
NUMBER = re.compile(r"\d+")
SWAPS = 2                                                               # target-swap couples per prompt
OPERATOR = re.compile(r"(?<=\s)[+\-*/](?=\s)")


def expressions(numbers: list[int]) -> dict[str, Fraction]:
    """Every expression over all of ``numbers`` in the SFT data's shapes (``(a o b) o c`` and ``a o (b o c)`` for
    three numbers, every order and operator) with its exact value; division by zero left out."""
    found = {}
    for order in itertools.permutations(numbers):
        for ops in itertools.product(OPS, repeat=len(order) - 1):
            text, value = str(order[0]), Fraction(order[0])
            for op, n in zip(ops, order[1:]):
                text, value = f"({text} {op} {n})", _apply(op, value, Fraction(n))
            shapes = [(text[1:-1] if len(order) > 1 else text, value)]
            if len(order) == 3:
                a, b, c = order
                shapes.append((f"{a} {ops[0]} ({b} {ops[1]} {c})", _apply(ops[0], a, _apply(ops[1], b, c))))
            found.update((t, v) for t, v in shapes if v is not None)
    return found


def _apply(op: str, a: Fraction | int | None, b: Fraction | int | None) -> Fraction | None:
    if a is None or b is None or (op == "/" and b == 0):
        return None
    a, b = Fraction(a), Fraction(b)
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]


def solve(numbers: list[int], target: int, rng: random.Random | None = None) -> str | None:
    """An expression over all of ``numbers`` equal to ``target`` (the first found, or one drawn with ``rng``:
    the first would favour ``+``, and a judge would learn that sums are right), or ``None``."""
    solutions = [e for e, value in expressions(numbers).items() if value == target]
    if not solutions:
        return None
    return rng.choice(solutions) if rng is not None else solutions[0]


def corruptions(answer: str, numbers: list[int], rng: random.Random) -> dict[str, str]:
    """At most one corrupted answer of each kind: ``operator``, ``reused``, ``appended``, ``dropped``."""
    found = {}
    ops = list(OPERATOR.finditer(answer))
    if ops:
        m = rng.choice(ops)
        found["operator"] = answer[:m.start()] + rng.choice([o for o in OPS if o != m.group()]) + answer[m.end():]
    spans = list(NUMBER.finditer(answer))
    others = [(m, n) for m in spans for n in numbers if str(n) != m.group()]
    if others:
        m, n = rng.choice(others)
        found["reused"] = answer[:m.start()] + str(n) + answer[m.end():]
    found["appended"] = f"{answer} {rng.choice('+-')} ({rng.choice(numbers)})"
    if len(spans) > 1 and ops:
        found["dropped"] = answer[:spans[-1].start()].rstrip(" +-*/(") + ")" * answer[spans[-1].end():].count(")")
    return found


def prompt_pairs(group: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """The pairs of one prompt's scored samples (rows with ``prompt``, ``completion``, ``meta``, ``correct``)."""
    prompt, numbers, target = group[0]["prompt"], list(group[0]["meta"]["numbers"]), int(group[0]["meta"]["target"])
    right = list(dict.fromkeys(r["completion"] for r in group if r["correct"]))
    wrong = list(dict.fromkeys(r["completion"] for r in group if not r["correct"]))
    pairs = [(prompt, c, w, "sampled") for c in right for w in wrong]
    solution = solve(numbers, target, rng)
    if solution is not None:
        solution = f"<answer>{solution}</answer>"
        pairs += [(prompt, solution, w, "solution") for w in wrong]
    best = right[0] if right else solution
    if best is None:
        return [dict(zip(("prompt", "chosen", "rejected", "kind"), p)) for p in pairs]
    for kind, bad in corruptions(extract_answer(best), numbers, rng).items():
        rejected = f"<answer>{bad}</answer>"
        if verify(rejected, numbers, target) != "correct" and rejected not in wrong:
            pairs.append((prompt, best, rejected, f"minimal_{kind}"))
    pairs += target_swap(prompt, numbers, target, best, rng)
    return [dict(zip(("prompt", "chosen", "rejected", "kind"), p)) for p in pairs]


def target_swap(prompt: str, numbers: list[int], target: int, best: str, rng: random.Random) -> list[tuple]:
    """Couples of pairs over the same two well-formed answers whose order only the target decides: ``best``
    against an expression ``w`` of another value ``T'`` for this prompt, and ``w`` against ``best`` for the prompt
    asking for ``T'`` (when the prompt is a Countdown template's: the other target is written the same way)."""
    others = [(e, int(v)) for e, v in expressions(numbers).items()
              if v != target and v.denominator == 1 and 0 < v <= 1000]
    template = next((t for t in TEMPLATES.values() if t.format(numbers=numbers, target=target) == prompt), None)
    if not others or template is None:
        return []
    pairs = []
    for expression, value in rng.sample(others, min(SWAPS, len(others))):
        other = f"<answer>{expression}</answer>"
        pairs += [(prompt, best, other, "valid_wrong"),
                  (template.format(numbers=numbers, target=value), other, best, "target_swap")]
    return pairs


def countdown_pairs(rows: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Every prompt's pairs, in prompt order, each with the ``prompt_index`` of its prompt."""
    groups: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row.get("prompt_index", row["prompt"]), []).append(row)
    rng, result = random.Random(seed), []
    for index, group in enumerate(groups.values()):
        result += [{**pair, "prompt_index": index} for pair in prompt_pairs(group, rng)]
    return result


def main(argv: list[str] | None = None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lit_rl.rows import read_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rollouts")
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pairs = countdown_pairs([row for _, row in read_rows(args.rollouts)], args.seed)
    pq.write_table(pa.Table.from_pylist(pairs), args.out)
    kinds: dict[str, int] = {}
    for p in pairs:
        kinds[p["kind"]] = kinds.get(p["kind"], 0) + 1
    print(f"{len(pairs)} pairs from {len({p['prompt_index'] for p in pairs})} prompts: {kinds} -> {args.out}")


if __name__ == "__main__":
    main()
