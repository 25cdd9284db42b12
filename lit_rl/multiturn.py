"""``MultiTurn``: episodes of model turns and an environment's answers, token in and token out.

An episode is the rendered prompt, then the model's first turn, the environment's observation, the model's
second turn, and so on. Every turn of every episode is generated in one engine call per turn (the episodes
still running, left-padded), and the model's tokens are kept exactly as the engine returned them: they are
decoded for the environment, never re-tokenised. Only the observation is rendered (with the chat template, as
the suffix a template adds after an assistant turn, :func:`lit_rl.chat.observation_ids`) and appended. The
record's ``completion_mask`` covers the whole episode (the model attends to everything) and its ``loss_mask``
the model's tokens only.
"""

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from lit_rl.chat import observation_ids, uses_template
from lit_rl.collect import Collector, Sampler
from lit_rl.environment import Environment, EnvStep, Messages
from lit_rl.rewards import Prompt
from lit_rl.rollout import RolloutBatch, Sampling
from lit_rl.stopping import eos_token_ids


@dataclass
class Episode:
    """One episode as it runs: its prompt's ids, the tokens after it with a 1 where the model generated them,
    the engine's log-probs (0 elsewhere), the turns as text and as messages, and its environment."""

    prompt: Prompt
    meta: dict[str, Any]
    prompt_ids: list[int]
    environment: Environment
    limit: float                                                        # the most tokens after the prompt
    ids: list[int] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    text: str = ""
    turns: Messages = field(default_factory=list)
    reward: float = 0.0
    correct: bool | None = None
    done: bool = False
    truncated: bool = False

    def append(self, ids: list[int], trained: bool, logps: list[float] | None = None) -> None:
        self.ids += ids
        self.trained += [int(trained)] * len(ids)
        self.logps += logps if logps is not None else [0.0] * len(ids)


class MultiTurn(Collector):
    """Episodes with an environment (:class:`lit_rl.Environment`; :class:`lit_rl.Tools` for tool calls).

    Each episode gets its own deep copy of ``environment``, reset with the episode's dataset prompt and row,
    and stepped with the text of each model turn. An episode ends when the environment says ``done`` (or has
    nothing to say), after ``max_turns`` model turns, or when the next observation or turn would not fit in
    ``max_tokens`` (or the model's context): then it is marked ``truncated``, never an error. A turn samples at
    most ``sampling.max_new_tokens``. The episode's score is the sum of its environment rewards plus the
    module's ``reward`` (if set) on the whole episode: reward functions see its text (model turns and
    observations as the model read them) or, for conversational ones, its turns as messages. ``correct`` is the
    module reward's judgement where it gives one, else the environment's last.

    Observations are rendered with the tokenizer's chat template when the prompt is (``chat_template``); a
    plain-text run appends a text observation's tokens as they are, and refuses message observations.
    """

    def __init__(self, environment: Environment, max_turns: int = 3, max_tokens: int | None = None) -> None:
        """
        Args:
            environment: answers the model between its turns (copied for every episode).
            max_turns: the most model turns in an episode.
            max_tokens: the most tokens an episode takes after its prompt, the model's and the environment's
                (``None``: what the model's context leaves).
        """
        if not isinstance(environment, Environment):
            raise TypeError(f"MultiTurn needs a lit_rl.Environment (got {type(environment).__name__})")
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1 (got {max_turns})")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or null (got {max_tokens})")
        self.environment, self.max_turns, self.max_tokens = environment, max_turns, max_tokens

    def room(self, sampling: Sampling) -> int:
        return self.max_tokens or sampling.max_new_tokens

    def tools(self) -> list[dict] | None:
        return self.environment.tools()

    @torch.no_grad()
    def collect(self, sampler: Sampler, prompts: list[Prompt], metas: list[dict], sampling: Sampling,
                n: int = 1) -> RolloutBatch:
        prompt_ids, prompt_mask = sampler.encode(prompts, sampling.max_new_tokens, self.tools())
        context = getattr(sampler.policy.model.config, "max_position_embeddings", None) or float("inf")
        episodes = []
        for p, (prompt, meta) in enumerate(zip(prompts, metas)):
            ids = prompt_ids[p][prompt_mask[p].bool()].tolist()
            limit = min(self.max_tokens or float("inf"), context - len(ids))
            for _ in range(n):
                episode = Episode(prompt, meta, ids, copy.deepcopy(self.environment), limit)
                self.call(episode, "reset", prompt, copy.deepcopy(meta))
                episodes.append(episode)
        engine_logps = True                                             # every turn's generation returned log-probs
        for turn in range(self.max_turns):
            running = [e for e in episodes if not e.done]
            for e in running:
                if e.limit - len(e.ids) < 1:
                    e.done = e.truncated = True
            if not (running := [e for e in running if not e.done]):
                break
            engine_logps &= self.model_turn(sampler, running, sampling)
            for e in running:
                self.environment_turn(sampler, e, turn)
        return self.record(sampler, episodes, prompt_ids, prompt_mask, n, engine_logps)

    def model_turn(self, sampler: Sampler, episodes: list[Episode], sampling: Sampling) -> bool:
        """One turn of every running episode in one engine call; each turn's tokens are kept as generated.
        Whether the engine returned their log-probs."""
        room = int(min([e.limit - len(e.ids) for e in episodes] + [sampling.max_new_tokens]))
        ids, mask = sampler.policy.pad([e.prompt_ids + e.ids for e in episodes], left=True)
        with sampler.timer("generate"):
            generation = sampler.engine.generate(ids, mask, replace(sampling, max_new_tokens=room))
        sampler.timer.count("generated_tokens", generation.completion_mask.sum().item())
        for i, e in enumerate(episodes):
            kept = generation.completion_mask[i].bool()
            new = generation.completion_ids[i][kept]
            logps = generation.logps[i][kept].tolist() if generation.logps is not None else None
            e.append(new.tolist(), trained=True, logps=logps)
            text = sampler.policy.decode(new[None], torch.ones_like(new)[None], sampling.stop)[0]
            e.text += text
            e.turns.append({"role": "assistant", "content": text})
        return generation.logps is not None

    def environment_turn(self, sampler: Sampler, e: Episode, turn: int) -> None:
        """The environment's answer to the episode's last model turn, appended unless the episode ends."""
        step = self.call(e, "step", e.turns[-1]["content"], turn=turn)
        if not isinstance(step, EnvStep):
            raise TypeError(f"{type(e.environment).__name__}.step returned {type(step).__name__}; it must return "
                            f"lit_rl.EnvStep(observation, reward, done, correct)")
        e.reward += float(step.reward or 0.0)
        e.correct = step.correct if step.correct is not None else e.correct
        if step.done or step.observation is None or turn == self.max_turns - 1:
            e.done = True
            return
        messages = [{"role": "user", "content": step.observation}] if isinstance(step.observation, str) else step.observation
        if not isinstance(messages, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and
                                                     isinstance(m.get("content"), str) for m in messages):
            raise TypeError(f"{type(e.environment).__name__}.step returned the observation {step.observation!r:.200}; "
                            f"it must be text or a list of chat messages ({{'role': ..., 'content': text}})")
        ids = self.observation_ids(sampler, e, messages)
        if len(e.ids) + len(ids) + 1 > e.limit:                         # no room for it and a model turn
            e.done = e.truncated = True
            return
        e.append(ids, trained=False)
        e.text += sampler.policy.tokenizer.decode(ids, skip_special_tokens=True)
        e.turns += messages

    def observation_ids(self, sampler: Sampler, e: Episode, messages: Messages) -> list[int]:
        """The observation's tokens: the chat template's suffix for ``messages`` after an assistant turn, its
        end-of-turn token first unless the model's turn already ended with it; a plain-text run's text as is."""
        tokenizer = sampler.policy.tokenizer
        if not uses_template(tokenizer, e.prompt, sampler.chat.get("chat_template", "auto")):
            if any(m.get("role") != "user" for m in messages):
                raise ValueError(f"{type(e.environment).__name__} answered with {[m.get('role') for m in messages]} "
                                 f"messages, which need a chat template to render; this run renders plain text "
                                 f"(chat_template: false or a tokenizer without one): answer with text")
            return sampler.policy.tokenize("".join(m["content"] for m in messages))
        eos = eos_token_ids(sampler.policy.model, tokenizer)
        ids = observation_ids(tokenizer, messages, eos, sampler.chat.get("chat_template_kwargs"))
        return ids[1:] if ids and ids[0] in eos and e.ids and e.ids[-1] in eos else ids

    def call(self, e: Episode, method: str, *args: Any, turn: int = 0) -> Any:
        """The environment's ``reset`` or ``step``, an exception named with the episode it came from."""
        try:
            return getattr(e.environment, method)(*args)
        except Exception as err:
            where = f"at turn {turn + 1}" if method == "step" else "at reset"
            raise RuntimeError(f"environment {type(e.environment).__name__} failed {where} of the episode of prompt "
                               f"{str(e.prompt)[:200]!r} (columns {e.meta!r}): {type(err).__name__}: {err}") from err

    def record(self, sampler: Sampler, episodes: list[Episode], prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
               n: int, engine_logps: bool) -> RolloutBatch:
        """The episodes as one scored rollout batch (behaviour log-probs when the engine gave every turn's)."""
        policy, device = sampler.policy, sampler.device
        completion_ids, completion_mask = policy.pad([e.ids for e in episodes], left=False)
        loss_mask = torch.zeros_like(completion_mask)
        behaviour = torch.zeros(completion_mask.shape, device=device)
        for i, e in enumerate(episodes):
            loss_mask[i, :len(e.ids)] = torch.tensor(e.trained, dtype=loss_mask.dtype)
            behaviour[i, :len(e.ids)] = torch.tensor(e.logps, dtype=behaviour.dtype)
        with sampler.timer("score"):
            prompts, metas = [e.prompt for e in episodes], [e.meta for e in episodes]
            groups = [i // n for i in range(len(episodes))]
            extra = torch.tensor([e.reward for e in episodes], dtype=torch.float32, device=device)
            scored = sampler.score(prompts, [e.text for e in episodes], metas, groups,
                                   [[t for t, m in zip(e.ids, e.trained) if m] for e in episodes],
                                   episodes=[e.turns for e in episodes], extra=extra)
        env_correct = torch.tensor([float("nan") if e.correct is None else float(e.correct) for e in episodes],
                                   device=device)
        scored["correct"] = torch.where(scored["correct"].isnan(), env_correct, scored["correct"])
        return RolloutBatch(
            prompt_ids=prompt_ids.repeat_interleave(n, 0), prompt_mask=prompt_mask.repeat_interleave(n, 0),
            completion_ids=completion_ids, completion_mask=completion_mask, loss_mask=loss_mask, metas=metas,
            group_size=n, behaviour_logps=behaviour if engine_logps else None, prompts=prompts, texts=[e.text for e in episodes],
            turns=[e.turns for e in episodes], truncated=torch.tensor([e.truncated for e in episodes], device=device),
            **scored)
