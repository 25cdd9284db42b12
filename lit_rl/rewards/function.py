"""Any Python function as a reward, with the signature users know from peer libraries."""

import functools
import importlib
from collections.abc import Callable
from typing import Any

from lit_rl.rewards.base import Columns, Prompt, RewardFunction, Score


def load_function(path: str) -> Callable[..., Any]:
    """``package.module:function`` (or ``package.module.function``) to the function, or a named error."""
    module_name, sep, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"reward function {path!r} is not a dotted path like 'mypkg.rewards:accuracy'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"reward function {path!r}: cannot import module {module_name!r} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward function {path!r}: module {module_name!r} has no function {attr!r}")
    return fn


def function_name(fn: Callable[..., Any]) -> str:
    """A function's ``__name__``; a ``functools.partial`` by its wrapped function's, a callable object (which has
    no ``__name__``) by its class name."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", None) or type(fn).__name__


class FunctionReward(RewardFunction):
    """``fn(prompts, completions, **columns) -> list[float | None]``, loaded by dotted path.

    ``prompts`` are the dataset's prompts (text, or chat messages), ``completions`` the decoded completions
    (text), and every dataset column reaches the function as a keyword argument holding one value per
    completion (accept ``**kwargs`` for the ones you ignore). An item may also be a :class:`lit_rl.Score` to
    report correctness; ``None`` (no opinion) is allowed when the function is one of several in
    :class:`lit_rl.Rewards`.
    """

    def __init__(self, function: str, name: str | None = None, kwargs: dict[str, Any] | None = None) -> None:
        """
        Args:
            function: dotted path, e.g. ``mypkg.rewards:accuracy``.
            name: the logged component's name (default: the function's name; a ``functools.partial``'s
                function's; a callable object's class name).
            kwargs: extra keyword arguments passed on every call.
        """
        self.function, self.fn = function, load_function(function)
        self.name = name or function_name(self.fn)
        self.kwargs = dict(kwargs or {})

    def score(self, prompts: list[Prompt], completions: list[str], columns: Columns) -> list[Score | float | None]:
        clash = {"prompts", "completions"} & set(columns)
        if clash:
            raise ValueError(f"dataset columns {sorted(clash)} clash with {self.function}'s own arguments; rename them")
        try:
            return self.fn(prompts, completions, **columns, **self.kwargs)
        except Exception as err:
            raise RuntimeError(f"reward function {self.function} failed on a batch of {len(completions)} "
                               f"completions (columns {sorted(columns)}; first completion {completions[0][:200]!r}): "
                               f"{type(err).__name__}: {err}") from err
