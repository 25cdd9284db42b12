"""A reward for the shape of a completion (a regular expression), not for its correctness."""

import re
from collections.abc import Sequence
from functools import reduce
from operator import or_
from typing import Literal

from lit_rl.rewards.base import Columns, Prompt, RewardFunction, Score

# <think>...</think> <answer>...</answer>, in time linear in the completion: the atomic group takes the first
# "</think> <answer>" and never retries a later one (the first leaves the answer the most room, so no match is
# lost), where the plain "^<think>.*?</think>\s*<answer>.*?</answer>$" rescans the rest after every one of them
# (9.4 s against 0.3 ms on 256 kB of "<think></think><answer>" repeated: benchmarks/format_reward.py).
R1_FORMAT = r"^<think>(?>.*?</think>\s*<answer>).*</answer>$"


class FormatReward(RewardFunction):
    """``reward`` when the completion matches ``pattern``, else 0; ``correct`` is ``None`` (a format is not an
    answer), so this reward reports no accuracy. The default asks for DeepSeek-R1's ``<think>...</think>
    <answer>...</answer>`` layout, in time linear in the completion's length (:data:`R1_FORMAT`; a pattern of
    your own runs as written: nested or repeated ``.*?`` can take time quadratic in it). Nothing is stripped from
    the completion before matching.
    """

    def __init__(self, pattern: str = R1_FORMAT, reward: float = 1.0,
                 flags: Sequence[str] = ("DOTALL",), match: Literal["fullmatch", "search"] = "search") -> None:
        """
        Args:
            pattern: a Python regular expression.
            reward: the reward of a completion that matches.
            flags: names of ``re`` flags, e.g. ``[DOTALL, MULTILINE]``.
            match: ``search`` (the pattern's own anchors decide; ``$`` allows one trailing newline) or
                ``fullmatch`` (the whole completion must match).
        """
        flags = [flags] if isinstance(flags, str) else list(flags)
        unknown = [f for f in flags if not isinstance(getattr(re, str(f), None), re.RegexFlag)]
        if unknown:
            raise ValueError(f"FormatReward flags {unknown} are not re flags (e.g. DOTALL, MULTILINE, IGNORECASE)")
        if match not in ("fullmatch", "search"):
            raise ValueError(f"FormatReward match must be 'fullmatch' or 'search', got {match!r}")
        try:
            self.regex = re.compile(pattern, reduce(or_, (getattr(re, f) for f in flags), 0))
        except re.error as err:
            raise ValueError(f"FormatReward pattern {pattern!r} is not a valid regular expression: {err}") from None
        self.pattern, self.reward, self.flags, self.match = pattern, float(reward), flags, match

    def score(self, prompts: list[Prompt], completions: list[str], columns: Columns) -> list[Score]:
        matches = self.regex.fullmatch if self.match == "fullmatch" else self.regex.search
        return [Score(self.reward if matches(completion) else 0.0, None) for completion in completions]
