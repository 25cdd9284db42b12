"""``CountdownFeedback``: Countdown as a multi-turn task, the verifier's verdict as the environment's answer."""

from typing import Any

from lit_rl.environment import EnvStep, Environment
from lit_rl.rewards import Prompt
from lit_rl.tasks.countdown.verify import evaluate


class CountdownFeedback(Environment):
    """Countdown with retries: a turn that misses is told why, and the model answers again.

    Observations use only the built-in tokenizer's characters (``ALPHABET``; any other would become ``<pad>``):

    - a wrong answer: what it evaluates to, exactly (``= 17, not 23.``; ``= 35/2, not 23.``; ``= -3, not 23.``),
      or ``divides by zero, not 23.``;
    - an invalid answer (a number not given or used twice, other characters, unparsable): ``invalid answer.``;
    - no ``<answer>``: ``no answer.``;

    each on its own line, followed, with ``restate``, by the episode's prompt again (``= 17, not 23.\\nUsing the
    numbers [2, 5, 7], create an equation that equals 23.\\n``), so the next turn starts where the model's training
    data started. Off by default: on ``builtin:countdown-sft`` no wording makes retries work before training (about
    85% of its retries are malformed with either; greedy accuracy on 500 held-out puzzles 0.130 at the first
    attempt, 0.136 within three with the verdict alone, 0.138 restated; ``benchmarks/countdown_feedback_probe.py``),
    and restating makes three turns longer (about 290 tokens) than that model's 256 positions, the verdict alone
    not (about 160).

    Rewards: 1.0 for the turn that solves the puzzle (the episode ends, ``correct``), ``wrong_reward`` for each
    turn that does not. An episode solved at turn ``k`` returns ``1 + (k - 1) * wrong_reward``, one never solved
    in ``T`` turns ``T * wrong_reward``: solving always beats not solving, and a negative ``wrong_reward`` makes
    solving sooner beat solving later. Departure from the single-turn schemes (``CountdownReward``): no partial
    credit for a well-formed miss. Summed over turns, 0.1 per miss would pay two misses and a hit (1.2) more than
    one hit (1.0), so a positive ``wrong_reward`` is refused.

    ``reset`` needs ``numbers`` and ``target`` among the row's columns (``CountdownData``'s ``meta``, or the
    columns of ``builtin:countdown-prompts.jsonl`` read by ``PromptData``).
    """

    def __init__(self, restate: bool = False, wrong_reward: float = 0.0) -> None:
        """
        Args:
            restate: after the verdict, repeat the episode's prompt (the last user message of a chat prompt).
            wrong_reward: reward of each turn that does not solve the puzzle; at most 0 (see the class docstring).
        """
        if wrong_reward > 0:
            raise ValueError(f"wrong_reward must be <= 0 (got {wrong_reward}): summed over turns, a positive reward "
                             "per miss pays an episode of misses and a late hit more than an early hit")
        self.restate, self.wrong_reward = restate, wrong_reward
        self.prompt: str | None = None
        self.numbers: list[int] = []
        self.target: int | None = None

    def reset(self, prompt: Prompt, columns: dict[str, Any]) -> None:
        missing = [k for k in ("numbers", "target") if k not in columns]
        if missing:
            raise ValueError(f"CountdownFeedback needs the columns 'numbers' and 'target'; the row lacks {missing} "
                             f"(it has {sorted(columns)})")
        if isinstance(prompt, list):
            prompt = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), "")
        self.prompt, self.numbers, self.target = prompt, [int(n) for n in columns["numbers"]], int(columns["target"])

    def step(self, completion: str) -> EnvStep:
        if self.target is None:
            raise RuntimeError("CountdownFeedback.step was called before reset(prompt, columns)")
        verdict, value = evaluate(completion, self.numbers, self.target)
        if verdict == "correct":
            return EnvStep(reward=1.0, done=True, correct=True)
        if verdict == "wrong":
            said = f"= {value}" if value is not None else "divides by zero"   # a Fraction prints as 17 or 35/2
            observation = f"{said}, not {self.target}.\n"
        else:
            observation = "invalid answer.\n" if verdict == "invalid" else "no answer.\n"
        if self.restate:
            observation += self.prompt
        return EnvStep(observation=observation, reward=self.wrong_reward, done=False, correct=False)
