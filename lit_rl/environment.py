"""Multi-turn environments: what answers the model between its turns.

An :class:`Environment` is configured once (YAML ``class_path``/``init_args``) and copied for every episode
(``copy.deepcopy``), so an episode's state lives on ``self``: :meth:`Environment.reset` starts the episode with
its dataset prompt and row, and :meth:`Environment.step` is called after each model turn with that turn's text.
The collector :class:`lit_rl.MultiTurn` runs the episodes; the environment never sees token ids, and what it
returns is rendered and appended for the model to read but never trained on. Environments run the user's own
code on the model's text: nothing here executes that text.
"""

from dataclasses import dataclass
from typing import Any

from lit_rl.rewards import Prompt

Messages = list[dict[str, Any]]                                     # chat messages, e.g. [{"role": "tool", ...}]


@dataclass(frozen=True)
class EnvStep:
    """The environment's answer to one model turn.

    ``observation``: text (rendered as a user turn) or chat messages (e.g. ``tool`` results) the model reads
    next; ``None`` when there is nothing to say (then the episode ends). ``reward``: this turn's reward (the
    episode's reward is the sum of its turns' plus the module's ``reward`` on the whole episode). ``done``: the
    episode is over. ``correct``: whether the episode solved its task, for ``accuracy`` metrics (the last turn
    that says so decides; ``None``: not judged)."""

    observation: str | Messages | None = None
    reward: float | None = None
    done: bool = False
    correct: bool | None = None


class Environment:
    """One episode's counterpart. Subclass it and implement :meth:`step` (and :meth:`reset` for state)."""

    def reset(self, prompt: Prompt, columns: dict[str, Any]) -> None:
        """Start an episode: ``prompt`` is the dataset's prompt (text or messages), ``columns`` its row's
        other columns (e.g. a gold answer). Nothing by default."""

    def step(self, completion: str) -> EnvStep:
        """Answer the model's turn ``completion`` (its text as decoded, stop strings cut as in single turn)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step(completion) -> EnvStep")

    def tools(self) -> list[dict[str, Any]] | None:
        """JSON schemas of the tools the model may call, passed to the chat template as ``tools`` when the
        prompt is rendered (:class:`lit_rl.Tools` gives its functions'); ``None``: no tools."""
        return None
