"""Countdown (rloo-vs-topr-countdown sec. 3.3): reach a target with + - * / over given numbers, each used at most once.

Puzzles are built forwards from a random expression tree, so every one is solvable. The verifier parses the
``<answer>`` with :mod:`ast` and walks a whitelist of nodes; the completion text is never executed.
"""

import ast
import hashlib
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from lit_rl.rewards import RewardFunction, Score

Verdict = Literal["correct", "wrong", "invalid", "no_answer"]
Scheme = Literal["original", "A", "B"]
Template = Literal["paper", "short"]

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
ARITHMETIC = re.compile(r"[0-9+\-*/()\s]*")                         # decimal integers, + - * / and parentheses
MAX_ANSWER_CHARS, MAX_NODES, MAX_DEPTH = 200, 64, 16
OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
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


# ----------------------------------------------------------------------------------------------- verifier
class _Invalid(Exception):
    pass


def _evaluate(node: ast.AST, depth: int = 0) -> Fraction:
    if depth > MAX_DEPTH:
        raise _Invalid("too deep")
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return Fraction(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in OPS:
        left, right = _evaluate(node.left, depth + 1), _evaluate(node.right, depth + 1)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        if isinstance(node.op, ast.Mult):
            return left * right
        return left / right                                             # ZeroDivisionError handled by caller
    raise _Invalid(f"disallowed syntax {type(node).__name__}")


def extract_answer(completion: str) -> str | None:
    """The last ``<answer>...</answer>`` span, or ``None``."""
    found = ANSWER.findall(completion)
    return found[-1].strip() if found else None


def verify(completion: str, numbers: list[int], target: int) -> Verdict:
    """``correct``; ``wrong`` (well-formed, allowed numbers, wrong value or division by zero);
    ``invalid`` (characters other than decimal digits, ``+ - * /``, parentheses and spaces; unparsable;
    a number not available; ``= R`` with ``R`` other than the target); ``no_answer``."""
    answer = extract_answer(completion)
    if answer is None:
        return "no_answer"
    if len(answer) > MAX_ANSWER_CHARS:
        return "invalid"
    expression, *rest = answer.split("=")                               # accept "expr = target" too
    if len(rest) > 1 or (rest and rest[0].strip() != str(target)) or not ARITHMETIC.fullmatch(expression):
        return "invalid"
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "invalid"
    nodes = list(ast.walk(tree.body))
    if len(nodes) > MAX_NODES:
        return "invalid"
    used = [n.value for n in nodes if isinstance(n, ast.Constant)]
    available = list(numbers)
    for value in used:
        if value not in available:
            return "invalid"
        available.remove(value)
    try:
        value = _evaluate(tree.body)
    except _Invalid:
        return "invalid"
    except ZeroDivisionError:
        return "wrong"
    return "correct" if value == target else "wrong"


REWARDS: dict[str, dict[Verdict, float]] = {
    "original": {"correct": 1.0, "wrong": 0.1, "invalid": 0.1, "no_answer": 0.0},
    "A": {"correct": 1.0, "wrong": 0.1, "invalid": 0.1, "no_answer": 0.0},
    "B": {"correct": 1.0, "wrong": 0.0, "invalid": -0.1, "no_answer": -0.2},
}


class CountdownReward(RewardFunction):
    """The Countdown verifier with the study's reward schemes (sec. 3.3).

    - ``original``: 1.0 correct; 0.1 well-formed but wrong or invalid; 0 no answer.
    - ``A``: as original, but a completion with no answer gets ``-0.0003 x word count``.
    - ``B``: 1.0 correct; 0 wrong; -0.1 invalid; -0.2 no answer.
    """

    def __init__(self, scheme: Scheme = "original") -> None:
        if scheme not in REWARDS:
            raise ValueError(f"unknown Countdown reward scheme {scheme!r}; choose one of {list(REWARDS)}")
        self.scheme = scheme

    def __call__(self, completion: str, meta: dict[str, Any]) -> Score:
        verdict = verify(completion, meta["numbers"], meta["target"])
        reward = REWARDS[self.scheme][verdict]
        if self.scheme == "A" and verdict == "no_answer":
            reward = -0.0003 * len(completion.split())
        return Score(reward, verdict == "correct")
