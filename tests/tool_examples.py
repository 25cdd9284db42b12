"""Tools for the tests, importable by dotted path (``tests.tool_examples:add``) as a user's own module is."""

import re
import time

from lit_rl.tools import ToolCall


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first integer.
        b: The second integer.
    """
    return a + b


def search(query: str, limit: int = 3) -> list[str]:
    """Search the notes for a query.

    Args:
        query: The words to look for.
        limit: The most results to return.
    """
    return [f"note {i} on {query}" for i in range(limit)]


def fail(reason: str) -> str:
    """Raise an error, as a tool with a bug does.

    Args:
        reason: The error's message.
    """
    raise RuntimeError(reason)


def hang(seconds: float) -> str:
    """Sleep, as a tool waiting on a server that never answers does.

    Args:
        seconds: How long to sleep.
    """
    time.sleep(seconds)
    return "woke up"


def undocumented(a: int) -> int:
    return a


def untyped(a):
    """Return its argument.

    Args:
        a: Anything.
    """
    return a


def ping() -> str:
    """Answer pong: a tool without arguments."""
    return "pong"


def angle_calls(text: str) -> list[ToolCall]:
    """Another tool-call format, for a pluggable parser: each ``<<name>>`` calls that tool without arguments."""
    return [ToolCall(name=name) for name in re.findall(r"<<(\w+)>>", text)]
