"""Countdown puzzles (Off-Policy Finetuning for LLM Math Reasoning sec. 3.3): reach a target with + - * / over given
numbers, each
used at most once. Puzzles are built forwards from a random expression tree, so every one is solvable."""

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Literal

Template = Literal["paper", "short"]

TEMPLATES = {
    "paper": "Using the numbers {numbers}, create an equation that equals {target}.\n",
    "short": "numbers {numbers} target {target}: ",
}
# Everything the prompts, answers and demonstrations can contain; the tokenizer is built from it.
ALPHABET = "0123456789+-*/()[]=,.: \nabcdefghijklmnopqrstuvwxyzU"
WORDS = ("<answer>", "</answer>")


@dataclass(frozen=True)
class Puzzle:
    numbers: tuple[int, ...]
    target: int
    solution: str

    def prompt(self, template: Template = "paper") -> str:
        return TEMPLATES[template].format(numbers=list(self.numbers), target=self.target)

    @property
    def meta(self) -> dict[str, Any]:
        return {"numbers": list(self.numbers), "target": self.target}


def _combine(rng: random.Random, a: tuple[int, str], b: tuple[int, str]) -> tuple[int, str] | None:
    (x, ex), (y, ey) = a, b
    op = rng.choice("+-*/")
    if op == "-" and x < y:
        (x, ex), (y, ey) = (y, ey), (x, ex)
    if op == "/" and (y == 0 or x % y):
        return None
    value = {"+": x + y, "-": x - y, "*": x * y, "/": x // y if y else 0}[op]
    return value, f"({ex} {op} {ey})"


def make_puzzle(rng: random.Random, num_numbers: int = 3, min_number: int = 1, max_number: int = 20,
                max_target: int = 1000) -> Puzzle:
    """Draw numbers, fold them pairwise in random order with random ops; keep a positive integer target."""
    for _ in range(10_000):
        numbers = [rng.randint(min_number, max_number) for _ in range(num_numbers)]
        items = [(n, str(n)) for n in numbers]
        while len(items) > 1:
            i, j = rng.sample(range(len(items)), 2)
            merged = _combine(rng, items[i], items[j])
            if merged is None:
                break
            items = [it for k, it in enumerate(items) if k not in (i, j)] + [merged]
        if len(items) == 1 and 0 < items[0][0] <= max_target:
            return Puzzle(tuple(numbers), items[0][0], items[0][1][1:-1] if num_numbers > 1 else items[0][1])
    raise ValueError(f"no puzzle with a target in [1, {max_target}] from {num_numbers} numbers in "
                     f"[{min_number}, {max_number}]")


def is_held_out(numbers: tuple[int, ...], target: int, fraction: float = 0.1) -> bool:
    """Stable hash split on the puzzle itself (sorted numbers, target): train and held-out never share one."""
    key = f"{sorted(numbers)}|{target}".encode()
    return int(hashlib.sha256(key).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def make_split(split: Literal["train", "val"], size: int, seed: int = 0, **puzzle_kwargs: Any) -> list[Puzzle]:
    """``size`` distinct puzzles of one split; the two splits are disjoint by :func:`is_held_out`."""
    rng, puzzles, seen = random.Random(f"{seed}-{split}"), [], set()
    for _ in range(100 * size + 10_000):
        if len(puzzles) == size:
            return puzzles
        p = make_puzzle(rng, **puzzle_kwargs)
        key = (tuple(sorted(p.numbers)), p.target)
        if key not in seen and is_held_out(p.numbers, p.target) == (split == "val"):
            seen.add(key)
            puzzles.append(p)
    if len(puzzles) < size:
        raise ValueError(f"found only {len(puzzles)} distinct {split} puzzles of the {size} asked for with "
                         f"{puzzle_kwargs}: ask for fewer, or widen the number range")
    return puzzles


def wrong_answer(rng: random.Random, puzzle: Puzzle) -> str:
    """A well-formed answer over the puzzle's numbers that misses the target (for imperfect demonstrations)."""
    for _ in range(100):
        items = [(n, str(n)) for n in puzzle.numbers]
        while len(items) > 1:
            merged = _combine(rng, items.pop(rng.randrange(len(items))), items.pop(rng.randrange(len(items))))
            items.append(merged or (0, "(0)"))
        if items[0][0] != puzzle.target and "(0)" not in items[0][1]:
            return items[0][1][1:-1] if len(puzzle.numbers) > 1 else items[0][1]
    raise ValueError(f"found no wrong answer for {puzzle} (a single number can only be right)")
