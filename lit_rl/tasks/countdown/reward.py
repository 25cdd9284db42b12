"""The Countdown study's reward schemes (sec. 3.3) over the verifier, as a reward class and as a plain function."""

from typing import Any, Literal

from lit_rl.rewards import RewardFunction, Score
from lit_rl.tasks.countdown.verify import Verdict, verify

Scheme = Literal["original", "A", "B"]

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
        return countdown_score(completion, meta["numbers"], meta["target"], self.scheme)


def countdown_score(completion: str, numbers: list[int], target: int, scheme: Scheme = "original") -> Score:
    verdict = verify(completion, numbers, target)
    reward = REWARDS[scheme][verdict]
    if scheme == "A" and verdict == "no_answer":
        reward = -0.0003 * len(completion.split())
    return Score(reward, verdict == "correct")


def countdown(prompts: list, completions: list[str], numbers: list, target: list, **columns: Any) -> list[Score]:
    """The ``original`` scheme in the signature of ``lit_rl.FunctionReward`` (``lit_rl.tasks.countdown:countdown``):
    what a user's own reward function for a prompt file with ``numbers`` and ``target`` columns looks like."""
    return [countdown_score(c, n, t) for c, n, t in zip(completions, numbers, target, strict=True)]
