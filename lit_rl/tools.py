"""Tool calling as an :class:`~lit_rl.environment.Environment`: the model calls the user's Python functions and
reads their results in its next turn.

A tool is a plain Python function with a type hint on every argument and a Google-style docstring (an ``Args:``
section describing each argument); ``transformers.utils.get_json_schema`` turns it into the JSON schema a chat
template lists for the model. The model's text is only parsed as JSON and its arguments only passed to those
functions: nothing here evaluates or executes it.
"""

import copy
import inspect
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transformers.utils import get_json_schema

from lit_rl.environment import Environment, EnvStep, Messages
from lit_rl.rewards import Prompt
from lit_rl.rewards.function import OverTime, function_name, in_thread, load_function

# A closed block, or an unclosed one running to the next block or the end of the text: the model may run out of
# tokens inside a call, which is then reported to it as malformed rather than taken for its final answer. vLLM's
# Hermes parser reads unclosed blocks the same way (``<tool_call>(.*?)</tool_call>|<tool_call>(.*)``).
TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|(?=<tool_call>)|\Z)", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """One call the model wrote: the tool's ``name`` and its ``arguments``, or an ``error`` saying why the block
    cannot be called (the model reads it; ``name`` is kept when the block had one)."""

    name: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def parse_tool_calls(text: str) -> list[ToolCall]:
    """The calls in ``text`` in the Hermes format Qwen2.5 and Qwen3 are trained on: zero or more
    ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks, anywhere in the text. A block without
    ``arguments`` calls the tool with none (a tool without parameters); a block that is not such an object
    becomes a call with an ``error``."""
    return [tool_call(body.strip()) for body in TOOL_CALL.findall(text)]


def tool_call(body: str) -> ToolCall:
    """One block's JSON as a call, or a call with an ``error`` naming what is wrong with it."""
    try:
        call = json.loads(body)
    except (ValueError, RecursionError) as err:                     # RecursionError: nesting deeper than json reads
        return ToolCall(error=f"malformed JSON in <tool_call>: {err}")
    if not isinstance(call, dict):
        return ToolCall(error=f'a <tool_call> must hold a JSON object {{"name": ..., "arguments": {{...}}}}, '
                              f"got {type(call).__name__}")
    name = call.get("name")
    if not isinstance(name, str) or not name:
        return ToolCall(error='a <tool_call> must name its tool: {"name": ..., "arguments": {...}}')
    arguments = call.get("arguments", {})
    if not isinstance(arguments, dict):
        return ToolCall(name=name, error=f"the arguments of {name} must be a JSON object, got "
                                         f"{type(arguments).__name__}")
    return ToolCall(name=name, arguments=arguments)


def tool_schema(fn: Callable[..., Any], label: str) -> dict[str, Any]:
    """``fn``'s JSON schema as chat templates take it, or an error naming the function and what it lacks."""
    try:
        return get_json_schema(fn)
    except Exception as err:                                            # transformers' own parsing exceptions
        raise ValueError(f"tool {label} cannot be described to the model: {str(err).rstrip('.!')}. A tool is a "
                         f"Python function with a type hint on every argument and a Google-style docstring whose "
                         f"first line says what it does and whose Args: section describes each argument "
                         f"(transformers.utils.get_json_schema writes the tool's JSON schema from them).") from err


def as_text(result: Any) -> str:
    """A tool's result as the model reads it: a string as it is, anything else as JSON (``str`` for what JSON
    cannot hold, e.g. a date)."""
    return result if isinstance(result, str) else json.dumps(result, default=str, ensure_ascii=False)


class Tools(Environment):
    """The model calls Python functions: each turn's ``<tool_call>`` blocks run in order and their results come
    back as ``tool`` messages; a turn without calls is the model's final answer and ends the episode.

    Everything that can go wrong with a call (an unknown tool, malformed JSON, missing or unexpected arguments,
    an exception in the tool, a call past ``timeout``) becomes an ``error: ...`` result the model reads, never
    an exception out of :meth:`step`: learning to call tools includes learning from bad calls.

    A call runs in a thread of its own and is given up after ``timeout`` seconds. Python cannot kill a thread: a
    function that hangs goes on running in the background (a daemon thread, so it never blocks the episode nor
    the process's exit) and should time itself out if it holds anything precious (a connection, a lock).
    A thread per call rather than a shared ``concurrent.futures`` pool because a pool's hung workers would keep
    later calls queued until they too time out, and its threads are joined at exit.

    The episode ends once it has made more than ``max_tool_calls`` calls (the calls of the turn that goes over
    do not run). :attr:`calls` counts them; :meth:`reset` sets it back to zero.

    Mix tools with your own logic by subclassing, e.g. to reward the final answer::

        class Calculator(Tools):
            def reset(self, prompt, columns):
                super().reset(prompt, columns)
                self.answer = columns["answer"]

            def step(self, completion):
                out = super().step(completion)
                if not out.done:                          # tool results for the model to read
                    return out
                correct = self.calls <= self.max_tool_calls and self.answer in completion
                return EnvStep(reward=float(correct), done=True, correct=correct)
    """

    def __init__(self, functions: list[str | Callable[..., Any]],
                 parser: str | Callable[[str], list[ToolCall]] | None = None, timeout: float = 10.0,
                 max_tool_calls: int = 8) -> None:
        """
        Args:
            functions: the tools, as dotted paths (``mypkg.tools:search``) or, from Python, the functions
                themselves; each typed and documented (see :func:`transformers.utils.get_json_schema`), each
                name once.
            parser: a function ``text -> list[ToolCall]`` (or its dotted path) for another tool-call format
                (default: :func:`parse_tool_calls`, Hermes/Qwen's ``<tool_call>`` JSON blocks).
            timeout: seconds one call may take before the model is told it timed out.
            max_tool_calls: calls an episode may make; the episode ends when a turn goes over.
        """
        if not functions:
            raise ValueError("Tools needs at least one function, e.g. functions: ['mypkg.tools:search']")
        if not timeout > 0:
            raise ValueError(f"Tools: timeout must be positive seconds, got {timeout}")
        if max_tool_calls < 1:
            raise ValueError(f"Tools: max_tool_calls must be at least 1, got {max_tool_calls}")
        loaded = [(f, load_function(f, "tool") if isinstance(f, str) else f) for f in functions]
        self.schemas = [tool_schema(fn, f if isinstance(f, str) else function_name(fn)) for f, fn in loaded]
        names = [s["function"]["name"] for s in self.schemas]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"Tools: more than one function is named {', '.join(twice)} (in {list(functions)}); the "
                             f"model calls tools by name, so each name must be unique: rename one of them")
        self.functions = {name: fn for name, (_, fn) in zip(names, loaded)}
        self.parser = (load_function(parser, "tool-call parser") if isinstance(parser, str)
                       else parser or parse_tool_calls)
        self.timeout, self.max_tool_calls = timeout, max_tool_calls
        self.calls = 0

    def tools(self) -> list[dict[str, Any]]:
        """The functions' JSON schemas, as ``get_json_schema`` gives them and chat templates take them."""
        return copy.deepcopy(self.schemas)

    def reset(self, prompt: Prompt, columns: dict[str, Any]) -> None:
        self.calls = 0

    def step(self, completion: str) -> EnvStep:
        calls = self.parser(completion)
        if not calls:                                                   # no call: the model's final answer
            return EnvStep(done=True)
        self.calls += len(calls)
        if self.calls > self.max_tool_calls:
            return EnvStep(done=True)
        return EnvStep(observation=self.results(calls))

    def results(self, calls: list[ToolCall]) -> Messages:
        """One ``tool`` message per call, in order."""
        return [{"role": "tool", "name": call.name, "content": self.run(call)} for call in calls]

    def run(self, call: ToolCall) -> str:
        """The call's result as text, or ``error: ...`` saying why there is none."""
        if call.error is not None:
            return f"error: {call.error}"
        fn = self.functions.get(call.name)
        if fn is None:
            return f"error: unknown tool {call.name!r}; available: {', '.join(self.functions)}"
        try:
            inspect.signature(fn).bind(**call.arguments)
        except TypeError as err:
            return f"error: wrong arguments for {call.name}: {err}"
        try:
            result = in_thread(fn, call.arguments, self.timeout)
        except OverTime:
            return f"error: {call.name} did not return within {self.timeout:g} s"
        except (Exception, SystemExit) as err:                          # SystemExit: e.g. argparse in a tool
            return f"error: {call.name} raised {type(err).__name__}: {err}"
        try:
            return as_text(result)
        except (TypeError, ValueError, RecursionError) as err:          # e.g. tuple keys, a cycle
            return f"error: the result of {call.name} cannot be written as JSON: {err}"
