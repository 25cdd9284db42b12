"""Preference pairs for a Countdown reward model, chosen for what they teach a judge of arithmetic.

From scored rollouts (``lit-rl generate``), within each prompt:

- ``sampled``: every correct sample against every distinct sample that is not (the mistakes the policy makes);
- ``solution``: a solution of the puzzle (found by search) against every sample that is not correct, so prompts
  the policy never solves teach too;
- ``minimal``: a correct answer against its corruptions one edit away, which only arithmetic or counting tells
  apart: one operator changed (the value changes, the look does not), one number replaced by another of the
  puzzle (a number used twice), a number appended again (``... + (3)``, how a policy over-optimised against a
  reward model that never saw these cheats), one number dropped.

Written as ``prompt``/``chosen``/``rejected`` rows with ``prompt_index`` (``OfflineData(val_fraction=...)`` holds
out whole prompts) and ``kind``:

    python -m lit_rl.tasks.countdown.pairs ROLLOUTS OUT.parquet [--seed 0]
"""

import argparse
import itertools
import random
import re
from typing import Any

from lit_rl.tasks.countdown.verify import extract_answer, verify

OPS = "+-*/"
NUMBER = re.compile(r"\d+")
OPERATOR = re.compile(r"(?<=\s)[+\-*/](?=\s)")


def solve(numbers: list[int], target: int) -> str | None:
    """An expression over all of ``numbers`` that equals ``target`` (``(a o b) o c`` or ``a o (b o c)`` for
    three numbers, every order and operator), or ``None``."""
    for order in itertools.permutations(numbers):
        for ops in itertools.product(OPS, repeat=len(order) - 1):
            expression = str(order[0])
            for op, n in zip(ops, order[1:]):
                expression = f"({expression} {op} {n})"
            candidates = [expression[1:-1] if len(order) > 1 else expression]
            if len(order) == 3:
                candidates.append(f"{order[0]} {ops[0]} ({order[1]} {ops[1]} {order[2]})")
            for candidate in candidates:
                if verify(f"<answer>{candidate}</answer>", numbers, target) == "correct":
                    return candidate
    return None


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
    numbers, target = list(group[0]["meta"]["numbers"]), int(group[0]["meta"]["target"])
    right = list(dict.fromkeys(r["completion"] for r in group if r["correct"]))
    wrong = list(dict.fromkeys(r["completion"] for r in group if not r["correct"]))
    pairs = [(c, w, "sampled") for c in right for w in wrong]
    solution = solve(numbers, target)
    if solution is not None:
        solution = f"<answer>{solution}</answer>"
        pairs += [(solution, w, "solution") for w in wrong]
    best = right[0] if right else solution
    if best is not None:
        for kind, bad in corruptions(extract_answer(best), numbers, rng).items():
            rejected = f"<answer>{bad}</answer>"
            if verify(rejected, numbers, target) != "correct" and rejected not in wrong:
                pairs.append((best, rejected, f"minimal_{kind}"))
    return [{"prompt": group[0]["prompt"], "chosen": c, "rejected": r, "kind": kind} for c, r, kind in pairs]


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
