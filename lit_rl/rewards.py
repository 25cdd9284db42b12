"""Reward functions map a completion (and its prompt's metadata) to a :class:`Score`. They never run the text."""

from typing import Any, NamedTuple


class Score(NamedTuple):
    reward: float
    correct: bool = False


class RewardFunction:
    """Base class for rewards configurable from YAML (``class_path``). Subclasses implement ``__call__``."""

    def __call__(self, completion: str, meta: dict[str, Any]) -> Score:
        raise NotImplementedError


def score_all(reward_fn: RewardFunction, completions: list[str], metas: list[dict[str, Any]]) -> list[Score]:
    """Score every completion; a failing reward names the sample instead of dying anonymously."""
    scores = []
    for i, (completion, meta) in enumerate(zip(completions, metas, strict=True)):
        try:
            score = reward_fn(completion, meta)
        except Exception as err:
            raise RuntimeError(f"reward function {type(reward_fn).__name__} failed on sample {i} "
                               f"(meta={meta!r}, completion={completion[:200]!r}): {err}") from err
        scores.append(score if isinstance(score, Score) else Score(float(score)))
    return scores
