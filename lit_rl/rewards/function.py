"""Any Python function as a reward, called as TRL calls one."""

import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from lit_rl.rewards.base import Columns, Prompt, RewardFunction


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
    """A Python function as a reward, called as TRL calls one: by keyword,
    ``fn(prompts=..., completions=..., completion_ids=..., **columns) -> list[float | None]``.

    ``prompts`` are the dataset's prompts (text, or chat messages); ``completions`` the decoded completions, as
    text for text prompts and, for chat prompts, as conversations of one assistant message
    (``[{"role": "assistant", "content": ...}]``, TRL's convention; ``conversational: false`` gives text);
    ``completion_ids`` their token ids as generated (``None`` where unknown, as for stored completions without
    ids); every dataset column arrives as a keyword argument holding one value per completion. A function with
    ``**kwargs`` gets all of them; one without gets those it names. An item may be a float, a
    :class:`lit_rl.Score` to report correctness, or ``None`` (no opinion) inside :class:`lit_rl.Rewards`. An
    ``async def`` function is awaited, concurrently with the other asynchronous components of a ``Rewards``.
    The convention matched is TRL 1.16's ``GRPOTrainer._calculate_rewards``: ``trl.rewards.accuracy_reward``,
    ``think_format_reward`` and a quick-start ``def reward_len(completions, **kwargs)`` run unchanged.
    """

    def __init__(self, function: str, name: str | None = None, kwargs: dict[str, Any] | None = None,
                 conversational: bool | None = None) -> None:
        """
        Args:
            function: dotted path, e.g. ``mypkg.rewards:accuracy``.
            name: the logged component's name (default: the function's name; a ``functools.partial``'s
                function's; a callable object's class name).
            kwargs: extra keyword arguments passed on every call.
            conversational: completions as assistant messages (``true``), as text (``false``), or as messages
                exactly when the prompts are (default).
        """
        self.function, self.fn = function, load_function(function)
        self.name = name or function_name(self.fn)
        self.kwargs = dict(kwargs or {})
        self.conversational = conversational

    def score(self, prompts: list[Prompt], completions: list[str], columns: Columns, *,
              completion_ids: list[list[int]] | None = None) -> Any:
        clash = {"prompts", "completions", "completion_ids"} & (set(columns) | set(self.kwargs))
        if clash:
            raise ValueError(f"dataset columns or kwargs {sorted(clash)} clash with {self.function}'s own arguments; "
                             f"rename them")
        chat = self.conversational if self.conversational is not None else any(not isinstance(p, str) for p in prompts)
        shown = [[{"role": "assistant", "content": c}] for c in completions] if chat else completions
        arguments = accepted(self.fn, {"prompts": prompts, "completions": shown, "completion_ids": completion_ids,
                                       **columns, **self.kwargs})
        where = (f"reward function {self.function} failed on a batch of {len(completions)} completions (columns "
                 f"{sorted(columns)}; first completion {completions[0][:200]!r})")
        try:
            out = self.fn(**arguments)
        except Exception as err:
            raise RuntimeError(f"{where}: {type(err).__name__}: {err}") from err
        return _awaited(out, where) if inspect.isawaitable(out) else out


async def _awaited(out: Any, where: str) -> Any:
    try:
        return await out
    except Exception as err:
        raise RuntimeError(f"{where}: {type(err).__name__}: {err}") from err


def accepted(fn: Callable[..., Any], arguments: dict[str, Any]) -> dict[str, Any]:
    """The ``arguments`` ``fn`` takes by keyword: all of them when it has ``**kwargs``, else those it names."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):                                    # a builtin without a signature: pass all
        return arguments
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return arguments
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in arguments.items() if k in names}
