"""The Countdown verifier: parses the last ``<answer>`` with :mod:`ast` and walks a whitelist of nodes (integers,
``+ - * /``, parentheses) with exact fractions; the completion text is never executed."""

import ast
import re
from fractions import Fraction
from typing import Literal

Verdict = Literal["correct", "wrong", "invalid", "no_answer"]

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
ARITHMETIC = re.compile(r"[0-9+\-*/()\s]*")                         # decimal integers, + - * / and parentheses
MAX_ANSWER_CHARS, MAX_NODES, MAX_DEPTH = 200, 64, 16
OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


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
    return evaluate(completion, numbers, target)[0]


def evaluate(completion: str, numbers: list[int], target: int) -> tuple[Verdict, Fraction | None]:
    """:func:`verify`'s verdict and the answer's exact value: ``None`` unless the verdict is ``correct`` or
    ``wrong`` (``None`` there too when the answer divides by zero)."""
    answer = extract_answer(completion)
    if answer is None:
        return "no_answer", None
    if len(answer) > MAX_ANSWER_CHARS:
        return "invalid", None
    expression, *rest = answer.split("=")                               # accept "expr = target" too
    if len(rest) > 1 or (rest and rest[0].strip() != str(target)) or not ARITHMETIC.fullmatch(expression):
        return "invalid", None
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "invalid", None
    nodes = list(ast.walk(tree.body))
    if len(nodes) > MAX_NODES:
        return "invalid", None
    used = [n.value for n in nodes if isinstance(n, ast.Constant)]
    available = list(numbers)
    for value in used:
        if value not in available:
            return "invalid", None
        available.remove(value)
    try:
        value = _evaluate(tree.body)
    except _Invalid:
        return "invalid", None
    except ZeroDivisionError:
        return "wrong", None
    return ("correct" if value == target else "wrong"), value
