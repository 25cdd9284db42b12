"""The reward interface: a batch of completions, their prompts and their dataset columns in, one :class:`Score`
per completion out. Rewards never execute completion text."""

import asyncio
import concurrent.futures
import copy
import inspect
import math
import re
from collections.abc import Hashable
from typing import Any, NamedTuple

Prompt = str | list[dict[str, str]]                                   # plain text, or chat messages {role, content}
Columns = dict[str, list[Any]]                                      # a dataset column's values, one per completion
FLOAT32_MAX = 3.4028234663852886e38                                 # the module stores scores as float32


class Score(NamedTuple):
    """One completion's reward; ``correct`` is ``None`` for a reward with no notion of correctness (it then
    reports no accuracy); ``components`` holds each part of a combined reward by name (:class:`Rewards`)."""

    reward: float
    correct: bool | None = None
    components: dict[str, float] | None = None


class RewardFunction:
    """Base class of rewards configurable from YAML (``class_path``).

    Implement either :meth:`score` (batched: every completion of a step at once, with its prompt and dataset
    columns) or ``__call__(completion, meta) -> Score | float`` (one completion and a dict of its row's columns);
    the default :meth:`score` calls ``__call__`` per sample. ``name`` keys the reward's logged component. A
    :meth:`score` with a keyword argument ``groups`` (:class:`Rewards`) is also given, per sample, the index of
    the dataset row it was sampled from, and one with ``completion_ids`` the completions' token ids as generated.
    An asynchronous reward's :meth:`score` may return an awaitable of its list: :class:`Rewards` awaits its
    components' together. Each reward gets its own copies of its inputs: editing them changes nothing another
    reward or the completion log sees.
    """

    name: str | None = None

    def score(self, prompts: list[Prompt], completions: list[str], columns: Columns) -> list[Score | float | None]:
        rows = [{key: values[i] for key, values in columns.items()} for i in range(len(completions))]
        scores = []
        for i, (completion, meta) in enumerate(zip(completions, rows, strict=True)):
            try:
                scores.append(self(completion, meta))
            except Exception as err:
                raise RuntimeError(f"reward {type(self).__name__} failed on sample {i} (columns={meta!r}, "
                                   f"completion={completion[:200]!r}): {err}") from err
        return scores

    def __call__(self, completion: str, meta: dict[str, Any]) -> Score | float:
        raise NotImplementedError(f"{type(self).__name__} implements neither score() nor __call__()")

    def check_rows(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        """Called once before training with every dataset row, as ``(where, columns)`` (``where`` is
        ``file:line``): raise a ``ValueError`` naming the rows this reward cannot score (an unparsable gold
        answer), rather than failing on one mid-run. Checks nothing by default."""

    def check_sampling(self, max_new_tokens: int, tokenizer: Any) -> None:
        """Called once before training with the longest completion the module samples, in tokens of the policy's
        ``tokenizer``: raise a ``ValueError`` when such a completion could not be scored (a reward model whose
        ``max_length`` cannot hold it), rather than at the first long one mid-run. Checks nothing by default."""

    def bind(self, device: Any, dtype: Any = None, training: bool = True) -> None:
        """Called by the module before each scoring with the policy's device and dtype and whether it trains:
        a reward holding a model (:class:`lit_rl.RewardModel`) follows the policy there; others ignore it."""

    def state_dict(self) -> dict[str, Any]:
        """State a resumed run needs (e.g. running normalisation statistics); saved in the module's checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def each_reward(rewards: Any, hook: str, *args: Any) -> None:
    """``reward.<hook>(*args)`` for each of ``rewards`` that has the hook (``None`` has none): the optional hooks
    ``bind``, ``check_rows`` and ``check_sampling``, called alike by the module, the data and :class:`Rewards`."""
    for reward in rewards:
        if callable(method := getattr(reward, hook, None)):
            method(*args)


def reward_name(reward: Any) -> str:
    """``reward.name`` if set, else the class name in snake case without ``Reward`` (``MathReward`` -> ``math``)."""
    if getattr(reward, "name", None):
        return reward.name
    base = type(reward).__name__.removesuffix("Reward") or type(reward).__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", base).lower()


def columns_of(metas: list[dict[str, Any]]) -> Columns:
    """Per-row dicts to column lists (a column missing from a row is ``None`` there)."""
    keys = list(dict.fromkeys(k for m in metas for k in m))
    return {k: [m.get(k) for m in metas] for k in keys}


def checked_scores(reward: Any, out: Any, completions: list[str], allow_none: bool = False) -> list[Score | None]:
    """``out`` as one :class:`Score` per completion, or a named error: the wrong number of scores, a value that is
    not a number, a reward that is not finite in float32, where the module stores scores (``None`` passes only
    where ``allow_none``, inside :class:`Rewards`)."""
    name = reward_name(reward)
    if isinstance(out, (str, bytes, dict)) or not hasattr(out, "__len__"):
        raise TypeError(f"reward {name} returned {type(out).__name__}; it must return a list with one score per "
                        f"completion")
    if len(out) != len(completions):
        raise ValueError(f"reward {name} returned {len(out)} scores for {len(completions)} completions")
    scores = []
    for i, value in enumerate(out):
        if value is None and allow_none:
            scores.append(None)
            continue
        score = value if isinstance(value, Score) else Score(value)
        number = score.reward
        if isinstance(number, bool) or not isinstance(number, (int, float)) and not hasattr(number, "__float__"):
            raise TypeError(f"reward {name} returned {value!r} for sample {i} (completion "
                            f"{completions[i][:200]!r}): a reward must be a number" +
                            (" (None is allowed only inside lit_rl.Rewards)" if value is None else ""))
        number = float(number)
        if not math.isfinite(number):
            raise ValueError(f"reward {name} returned {number} for sample {i} (completion {completions[i][:200]!r})")
        if abs(number) > FLOAT32_MAX:
            raise ValueError(f"reward {name} returned {number:g} for sample {i} (completion {completions[i][:200]!r}), "
                             f"beyond float32's range (+-{FLOAT32_MAX:.4g}), where scores are stored: it would become "
                             f"inf; scale the reward down")
        correct = None if score.correct is None else bool(score.correct)
        scores.append(Score(number, correct, score.components))
    return scores


def call_score(reward: Any, prompts: list[Prompt], completions: list[str], columns: Columns, **extras: Any) -> Any:
    """``reward.score`` on copies of its inputs (a reward that edits them changes nothing its caller keeps: a
    deep copy costs little beside scoring), with each of ``extras`` (``groups``, ``completion_ids``, ``episodes``) that is known
    and that its ``score`` takes as a keyword."""
    takes = inspect.signature(reward.score).parameters
    known = {k: copy.deepcopy(v) for k, v in extras.items() if v is not None and k in takes}
    return reward.score(copy.deepcopy(prompts), list(completions), copy.deepcopy(columns), **known)


def run_awaitables(awaitables: list[Any]) -> list[Any]:
    """The results of ``awaitables``, awaited concurrently in one event loop (in a thread of its own when this
    thread already runs a loop, as a notebook's does)."""
    async def gather() -> list[Any]:
        return list(await asyncio.gather(*awaitables))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(gather())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, gather()).result()


def score_batch(reward: RewardFunction, prompts: list[Prompt], completions: list[str], metas: list[dict[str, Any]],
                groups: list[Hashable] | None = None, completion_ids: list[list[int]] | None = None,
                episodes: list[list[dict]] | None = None) -> list[Score]:
    """Score every completion with ``reward`` in one call and check what it returned; ``groups`` is, per sample,
    the dataset row it was sampled from (for rewards that normalise within a row's group, :class:`Rewards`),
    ``completion_ids`` its token ids as generated (for rewards that read them, as TRL's may) and ``episodes`` a
    multi-turn episode's turns as chat messages (conversational reward functions are shown them)."""
    if reward is None:
        raise ValueError("no reward is set: give the module a `reward` (e.g. model.init_args.reward in the YAML)")
    out = call_score(reward, prompts, completions, columns_of(metas), groups=groups, completion_ids=completion_ids,
                     episodes=episodes)
    return checked_scores(reward, run_awaitables([out])[0] if inspect.isawaitable(out) else out, completions)
