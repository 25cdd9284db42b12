"""Answers to math word problems (GSM8K, MATH) checked with ``math-verify``, under a time limit that holds off the
main thread."""

import contextlib
import importlib.util
import json
import logging
import re
import select
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

from lit_rl.rewards.base import Columns, Prompt, RewardFunction, Score

log = logging.getLogger(__name__)
STARTUP_TIMEOUT = 120.0                             # seconds for a fresh worker to import math-verify
WORKER = Path(__file__).with_name("math_worker.py")
TIMEOUT, CRASHED = object(), object()
DELIMITED = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed")           # math mode already: $..$, \(..\), \[..\], \boxed{}
NOT_WORDS = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm|operatorname|begin|end)\s*\{[^{}]*\}|\\[a-zA-Z]+")
PROSE = re.compile(r"[a-zA-Z]{3,}|^\W*[a-zA-Z]{2,}\W*$")                # a word outside LaTeX, or one word alone


def is_prose(text: str) -> bool:
    """Whether ``text`` holds words (``yes``, ``see the figure``, a worked solution) rather than one answer in
    LaTeX (``3\\sqrt{2}``, ``x^2 + xy``): commands and their ``\\text{}`` arguments are not words."""
    return PROSE.search(NOT_WORDS.sub(" ", text)) is not None


def gold_text(answer: Any) -> str:
    """The gold answer to parse: the text after the last ``####`` of a GSM8K solution, else the whole text; bare
    LaTeX (MATH's ``answer`` column: ``3\\sqrt{2}``, ``(-\\infty, 3]``) in ``$...$``. Outside math mode
    math-verify reads bare LaTeX as its first number (``3`` for ``3\\sqrt{2}``) or as nothing (``\\sqrt{51}``);
    text already in math mode or holding words is left as it is (on a full solution math-verify takes its
    ``\\boxed{}`` or "answer is"; it has no notion of ``####``)."""
    text = str(answer)
    text = text.rpartition("####")[2].strip() if "####" in text else text.strip()
    return text if not text or DELIMITED.search(text) or is_prose(text) else f"${text}$"


def _read(process: subprocess.Popen, timeout: float) -> Any:
    """The worker's next answer, or ``TIMEOUT``; ``EOFError`` if it died. ``select`` waits from any thread."""
    if not select.select([process.stdout], [], [], timeout)[0]:
        return TIMEOUT
    line = process.stdout.readline()
    if not line:
        raise EOFError
    return json.loads(line)


def _stop(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()
    process.stdout.close()
    with contextlib.suppress(BrokenPipeError):                      # unsent bytes for a dead worker; still closes
        process.stdin.close()


class MathReward(RewardFunction):
    """``correct_reward`` when ``verify(parse(gold), parse(completion))`` holds, else ``wrong_reward``.

    math-verify extracts the completion's answer (a ``\\boxed{}`` first, then an "answer is ..." phrase, then the
    last number or expression) and compares it with the gold answer symbolically and numerically: ``\\frac{3}{4}``
    equals ``0.75``, ``1,000`` equals ``1000``. The gold is a column of the dataset: a GSM8K solution ending in
    ``#### 72``, a bare number, or a LaTeX answer. Nothing in a completion is executed: math-verify parses it.

    Departures from plain ``math_verify.verify``:
      1. The time limit is ours, not math-verify's (its ``signal.alarm`` fails off the main thread). Parsing and
         verification run in a persistent child process (``spawn``, started on the first call); a completion
         that takes longer than ``timeout`` (sympy hangs on ``\\boxed{9^{9^{9^{9}}}}``, math-verify's extraction
         on 100k characters of ``"7 7 7 ..."``) is scored wrong with a warning, and the child is killed and
         restarted. The child is a separate interpreter running ``math_worker.py`` alone (about 1 s to start
         and 60 MB: it imports math-verify, not lit-rl or torch). A worker found dead (killed while idle) is
         restarted and the sample sent again, once; a sample that kills a fresh worker too is scored wrong.
      2. A GSM8K gold answer is the text after its last ``####`` (math-verify itself ignores the marker).
    """

    def __init__(self, answer_column: str = "answer", correct_reward: float = 1.0, wrong_reward: float = 0.0,
                 timeout: float = 5.0) -> None:
        """
        Args:
            answer_column: the dataset column holding the gold answer.
            correct_reward: the reward of a correct answer.
            wrong_reward: the reward of a wrong, missing or timed-out answer.
            timeout: seconds allowed to parse and verify one completion.
        """
        if importlib.util.find_spec("math_verify") is None:
            raise ImportError("MathReward needs math-verify: pip install 'math-verify==0.9.*'")
        if not timeout > 0:
            raise ValueError(f"MathReward timeout must be positive, got {timeout}")
        self.answer_column, self.timeout = answer_column, float(timeout)
        self.correct_reward, self.wrong_reward = float(correct_reward), float(wrong_reward)
        self._reset()

    def __getstate__(self) -> dict[str, Any]:                          # copies and pickles start their own worker
        return {k: v for k, v in self.__dict__.items() if k not in ("_worker", "_finalizer", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def _reset(self) -> None:
        self._worker: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()

    def score(self, prompts: list[Prompt], completions: list[str], columns: Columns) -> list[Score]:
        if self.answer_column not in columns:
            raise ValueError(f"MathReward reads the gold answer from column {self.answer_column!r}, which the dataset "
                           f"lacks; its columns are {sorted(columns)} (set answer_column)")
        with self._lock:
            return [self._score_one(i, gold, completion)
                    for i, (gold, completion) in enumerate(zip(columns[self.answer_column], completions, strict=True))]

    def check_rows(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        """Parse each distinct gold answer once (the worker keeps it for scoring): an unparsable one (``""``,
        ``yes``, a column that is not the answer) is refused now, by file:line, not mid-run as a batch's sample."""
        verdicts, bad = {}, []
        with self._lock:
            for where, row in rows:
                if self.answer_column not in row:
                    raise ValueError(f"{where}: MathReward reads the gold answer from column {self.answer_column!r}, "
                                     f"which this row lacks; its columns are {sorted(row)} (set answer_column)")
                gold = gold_text(row[self.answer_column])
                if gold not in verdicts:
                    verdicts[gold] = self._ask(gold, None) if gold else None
                if verdicts[gold] is not True:
                    why = {TIMEOUT: " (timed out)", CRASHED: " (crashed the verifier)"}.get(verdicts[gold], "")
                    bad.append(f"{where}: {row[self.answer_column]!r}{why}")
        if bad:
            raise ValueError(f"MathReward: math-verify cannot parse {len(bad)} of the {len(rows)} gold answers in "
                             f"column {self.answer_column!r}: {'; '.join(bad[:5])}{'; ...' if len(bad) > 5 else ''}. "
                             f"Fix those rows, or set answer_column to the column holding the final answer")

    def _score_one(self, i: int, gold: Any, completion: str) -> Score:
        correct = self._ask(gold_text(gold), completion)
        if correct is CRASHED:                                          # killed while idle, or by this sample
            log.warning(f"math reward: the verifier had died; restarted it and sent sample {i} again")
            correct = self._ask(gold_text(gold), completion)
        if correct is None:
            raise ValueError(f"math-verify cannot parse the gold answer of sample {i}: {gold!r}")
        if correct is TIMEOUT or correct is CRASHED:
            why = f"timed out after {self.timeout:g} s" if correct is TIMEOUT else "crashed the verifier"
            log.warning(f"math reward: sample {i} {why} (completion {completion[:200]!r}); scored as wrong, "
                        f"restarting the verifier")
            return Score(self.wrong_reward, False)
        return Score(self.correct_reward if correct else self.wrong_reward, correct)

    def _ask(self, gold: str, completion: str | None) -> Any:
        """The worker's answer to one line (see ``math_worker``), ``TIMEOUT`` or ``CRASHED``; a worker that timed
        out or died is stopped, and the next call starts a fresh one."""
        process = self._worker or self._start()
        try:
            process.stdin.write(json.dumps([gold, completion]) + "\n")
            process.stdin.flush()
            answer = _read(process, self.timeout)
        except (EOFError, OSError, json.JSONDecodeError):
            answer = CRASHED
        if answer is TIMEOUT or answer is CRASHED:
            self._finalizer()
            self._worker = None
        return answer

    def _start(self) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-I", str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True)
        self._finalizer = weakref.finalize(self, _stop, process)          # also runs at interpreter exit
        try:
            ready = _read(process, STARTUP_TIMEOUT) == "ready"
        except (EOFError, json.JSONDecodeError):
            ready = False
        if not ready:
            exitcode = process.poll()
            self._finalizer()
            raise RuntimeError(f"the math-verify worker ({WORKER}) did not start within {STARTUP_TIMEOUT:g} s"
                               if exitcode is None else f"the math-verify worker ({WORKER}) exited with code "
                               f"{exitcode} while starting (its stderr above says why)")
        self._worker = process
        return process
