"""Any Python function as a reward, called as TRL calls one."""

import asyncio
import functools
import importlib
import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from lit_rl.rewards.base import Columns, Prompt, RewardFunction

log = logging.getLogger(__name__)
SLOW = 60.0                                                         # seconds: a call past it is reported


def load_function(path: str, what: str = "reward function") -> Callable[..., Any]:
    """``package.module:function`` (or ``package.module.function``) to the function, or an error naming ``what``
    the function was for (a reward function, a tool)."""
    module_name, sep, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(f"{what} {path!r} is not a dotted path like 'mypkg.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{what} {path!r}: cannot import module {module_name!r} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{what} {path!r}: module {module_name!r} has no function {attr!r}")
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
    (``[{"role": "assistant", "content": ...}]``, TRL's convention; ``conversational: false`` gives text; a
    multi-turn episode is shown as all its turns, the model's and the environment's, as messages);
    ``completion_ids`` their token ids as generated (``None`` where unknown, as for stored completions without
    ids); every dataset column arrives as a keyword argument holding one value per completion. A function with
    ``**kwargs`` gets all of them; one without gets those it names. An item may be a float, a
    :class:`lit_rl.Score` to report correctness, or ``None`` (no opinion) inside :class:`lit_rl.Rewards`. An
    ``async def`` function is awaited, concurrently with the other asynchronous components of a ``Rewards``.
    The convention matched is TRL 1.16's ``GRPOTrainer._calculate_rewards``: ``trl.rewards.accuracy_reward``,
    ``think_format_reward`` and a quick-start ``def reward_len(completions, **kwargs)`` run unchanged.
    """

    def __init__(self, function: str, name: str | None = None, kwargs: dict[str, Any] | None = None,
                 conversational: bool | None = None, timeout: float | None = None,
                 warn_after: float | None = None) -> None:
        """
        Args:
            function: dotted path, e.g. ``mypkg.rewards:accuracy``.
            name: the logged component's name (default: the function's name; a ``functools.partial``'s
                function's; a callable object's class name).
            kwargs: extra keyword arguments passed on every call.
            conversational: completions as assistant messages (``true``), as text (``false``), or as messages
                exactly when the prompts are (default).
            timeout: seconds one call (a whole batch) may take before the run stops with an error naming the
                function (default: no limit). A plain function runs in a thread of its own then, which Python
                cannot stop: it may go on in the background.
            warn_after: seconds after which a call that finished is reported as slow (default: 60).
        """
        if timeout is not None and not timeout > 0:
            raise ValueError(f"FunctionReward {function}: timeout must be positive seconds or unset, got {timeout}")
        if warn_after is not None and not warn_after > 0:
            raise ValueError(f"FunctionReward {function}: warn_after must be positive seconds, got {warn_after}")
        self.function, self.fn = function, load_function(function)
        self.name = name or function_name(self.fn)
        self.kwargs = dict(kwargs or {})
        self.conversational, self.timeout = conversational, timeout
        self.warn_after = SLOW if warn_after is None else warn_after

    def score(self, prompts: list[Prompt], completions: list[str], columns: Columns, *,
              completion_ids: list[list[int]] | None = None, episodes: list[list[dict]] | None = None) -> Any:
        clash = {"prompts", "completions", "completion_ids"} & (set(columns) | set(self.kwargs))
        if clash:
            raise ValueError(f"dataset columns or kwargs {sorted(clash)} clash with {self.function}'s own arguments; "
                             f"rename them")
        chat = self.conversational if self.conversational is not None else any(not isinstance(p, str) for p in prompts)
        if chat:                                                        # a multi-turn episode: all its turns
            shown = episodes or [[{"role": "assistant", "content": c}] for c in completions]
        else:
            shown = completions
        arguments = accepted(self.fn, {"prompts": prompts, "completions": shown, "completion_ids": completion_ids,
                                       **columns, **self.kwargs})
        where = (f"reward function {self.function} failed on a batch of {len(completions)} completions (columns "
                 f"{sorted(columns)}; first completion {completions[0][:200]!r})")
        start = time.monotonic()
        try:
            out = self.fn(**arguments) if self.timeout is None else in_thread(self.fn, arguments, self.timeout)
        except OverTime:
            raise self._late(len(completions)) from None
        except Exception as err:
            raise RuntimeError(f"{where}: {type(err).__name__}: {err}") from err
        if inspect.isawaitable(out):
            return self._awaited(out, where, start, len(completions))
        self._warn_if_slow(start, len(completions))
        return out

    async def _awaited(self, out: Any, where: str, start: float, n: int) -> Any:
        try:
            result = await asyncio.wait_for(out, self.timeout)
        except TimeoutError as err:                                    # ours, or one the function raised itself
            if self.timeout is None or time.monotonic() - start < self.timeout:
                raise RuntimeError(f"{where}: {type(err).__name__}: {err}") from err
            raise self._late(n) from None
        except Exception as err:
            raise RuntimeError(f"{where}: {type(err).__name__}: {err}") from err
        self._warn_if_slow(start, n)
        return result

    def _late(self, n: int) -> TimeoutError:
        return TimeoutError(f"reward function {self.function} did not return within its timeout of {self.timeout:g} s "
                            f"on a batch of {n} completions (raise timeout, or make the function time itself out)")

    def _warn_if_slow(self, start: float, n: int) -> None:
        if (seconds := time.monotonic() - start) > self.warn_after:
            log.warning(f"reward function {self.function} took {seconds:.1f} s on a batch of {n} completions "
                        f"(warn_after: {self.warn_after:g}; a timeout stops a call that hangs)")


class OverTime(Exception):
    """A call ran past its time limit (not a ``TimeoutError`` the function raised itself)."""


def in_thread(fn: Callable[..., Any], arguments: dict[str, Any], timeout: float) -> Any:
    """``fn(**arguments)`` in a daemon thread, its result or its exception; :class:`OverTime` after ``timeout``
    seconds (the thread is left running: Python cannot stop it, and a daemon thread never blocks the exit)."""
    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["result"] = fn(**arguments)
        except BaseException as err:                                   # re-raised in the caller's thread
            done["error"] = err

    thread = threading.Thread(target=run, name=f"timed {function_name(fn)}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise OverTime
    if "error" in done:
        raise done["error"]
    return done["result"]


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
