"""Sample production in one place: prompts in, a scored :class:`~lit_rl.rollout.RolloutBatch` out.

A :class:`Collector` decides what an episode is: :class:`SingleTurn` (one completion per sample, the default)
or :class:`lit_rl.MultiTurn` (model turns and an environment's observations). It works through a
:class:`Sampler`, the parts every collector needs: the policy's tokenizer, the rollout engine, the rewards and
the chat settings. Training, validation, ReMax's greedy baseline, ERPD's evaluation and ``lit-rl generate`` all
call a collector; stored rollouts are replayed by :func:`replay` into the same record.
"""

from collections.abc import Hashable
from typing import Any

import torch
from torch import Tensor

from lit_rl.chat import render_prompt
from lit_rl.offline import StoredGroups
from lit_rl.policy import Policy
from lit_rl.rewards import Prompt, RewardFunction, score_batch
from lit_rl.rewards.base import each_reward
from lit_rl.rollout import RolloutBatch, RolloutEngine, Sampling
from lit_rl.timing import PhaseTimer


class Sampler:
    """What a collector samples and scores with: the ``policy`` (tokenizer, encoding, decoding), the ``engine``,
    the ``reward`` trained on and the ``gold_reward`` only logged, and the chat settings prompts are rendered
    with (``chat_template``, ``system_prompt``, ``chat_template_kwargs``). ``timer`` records the phases."""

    def __init__(self, policy: Policy, engine: RolloutEngine, reward: RewardFunction | None = None,
                 gold_reward: RewardFunction | None = None, chat: dict[str, Any] | None = None,
                 timer: PhaseTimer | None = None) -> None:
        self.policy, self.engine, self.reward, self.gold_reward = policy, engine, reward, gold_reward
        self.chat, self.timer = chat or {}, timer or PhaseTimer()

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def render(self, prompt: Prompt, tools: list[dict] | None = None) -> str:
        """The prompt as the model sees it (:func:`lit_rl.chat.render_prompt`), with ``tools`` for the template."""
        kwargs = self.chat.get("chat_template_kwargs") or {}
        chat = {**self.chat, "chat_template_kwargs": {**kwargs, "tools": tools} if tools else kwargs}
        return render_prompt(self.policy.tokenizer, prompt, **chat)

    def encode(self, prompts: list[Prompt], max_new_tokens: int, tools: list[dict] | None = None) -> tuple[Tensor, Tensor]:
        """Left-padded prompt ids and mask, cut from the left where they leave no room for ``max_new_tokens``."""
        return self.policy.encode_prompts([self.render(p, tools) for p in prompts], max_new_tokens)

    def prompt_fits(self, prompt: Prompt, room: int, tools: list[dict] | None = None) -> bool:
        """Whether the rendered prompt leaves ``room`` tokens of the model's context for what follows it."""
        budget = self.policy.prompt_budget(room)
        return budget is None or len(self.policy.tokenize(self.render(prompt, tools))) <= budget

    def score(self, prompts: list[Prompt], texts: list[str], metas: list[dict], groups: list[Hashable],
              completion_ids: list[list[int]], episodes: list[list[dict]] | None = None,
              extra: Tensor | None = None) -> dict[str, Tensor]:
        """The reward's scores (plus ``extra``, an environment's per-sample rewards) as ``scores``, ``correct``
        (NaN: not judged) and ``components``, and the gold reward's as ``gold_scores`` and ``gold_correct``.
        Rewards holding a model are bound to the policy's device and dtype first, and told whether the policy
        trains (running statistics update then). ``groups`` is each sample's dataset row (rewards that
        normalise per group use it), ``completion_ids`` its token ids as generated, ``episodes`` a multi-turn
        episode's turns as messages (what conversational reward functions are shown)."""
        device, dtype = self.device, next(self.policy.parameters()).dtype
        each_reward((self.reward, self.gold_reward), "bind", device, dtype, self.policy.training)
        extras = {"groups": groups, "completion_ids": completion_ids, "episodes": episodes}
        if self.reward is None and extra is not None:                   # an environment's rewards alone
            out = {"scores": extra, "correct": torch.full_like(extra, float("nan")), "components": {}}
        else:                                                           # score_batch names a missing reward
            out = as_tensors(score_batch(self.reward, prompts, texts, metas, **extras), device)
            if extra is not None:
                out["scores"] = out["scores"] + extra
        if self.gold_reward is not None:
            gold = as_tensors(score_batch(self.gold_reward, prompts, texts, metas, **extras), device)
            out.update(gold_scores=gold["scores"], gold_correct=gold["correct"])
        return out


def as_tensors(scores: list, device: torch.device) -> dict[str, Any]:
    """A list of :class:`~lit_rl.rewards.Score` as the rollout batch's ``scores``, ``correct`` and ``components``."""
    names = list(dict.fromkeys(k for s in scores for k in (s.components or {})))
    return {"scores": torch.tensor([s.reward for s in scores], dtype=torch.float32, device=device),
            "correct": torch.tensor([float("nan") if s.correct is None else float(s.correct) for s in scores],
                                    device=device),
            "components": {k: torch.tensor([(s.components or {}).get(k, float("nan")) for s in scores],
                                           device=device) for k in names}}


class Collector:
    """Turns a batch of prompts into scored samples. Subclass it for another kind of episode; configured on a
    module as ``model.init_args.collector: {class_path: ..., init_args: ...}``."""

    def room(self, sampling: Sampling) -> int:
        """Tokens of the model's context a sample needs after its prompt (``PromptData(filter_long)`` drops
        prompts that leave less)."""
        return sampling.max_new_tokens

    def tools(self) -> list[dict] | None:
        """Tool schemas the prompts are rendered with (``None``: none)."""
        return None

    def collect(self, sampler: Sampler, prompts: list[Prompt], metas: list[dict], sampling: Sampling,
                n: int = 1) -> RolloutBatch:
        """``n`` scored samples per prompt, prompt-major. ``prompts`` are the dataset's prompts (text or
        messages) and ``metas`` their rows' other columns."""
        raise NotImplementedError


class SingleTurn(Collector):
    """One completion per sample: render and encode the prompts, generate, decode, score."""

    @torch.no_grad()
    def collect(self, sampler: Sampler, prompts: list[Prompt], metas: list[dict], sampling: Sampling,
                n: int = 1) -> RolloutBatch:
        prompt_ids, prompt_mask = sampler.encode(prompts, sampling.max_new_tokens)
        with sampler.timer("generate"):
            generation = sampler.engine.generate(prompt_ids, prompt_mask, sampling, n)
        mask = generation.completion_mask
        sampler.timer.count("generated_tokens", mask.sum().item())
        with sampler.timer("score"):
            texts = sampler.policy.decode(generation.completion_ids, mask, sampling.stop)
            groups = [row for row in range(len(prompts)) for _ in range(n)]      # each sample's row in the batch
            ids = [row[m.bool()].tolist() for row, m in zip(generation.completion_ids, mask)]
            prompts, metas = [p for p in prompts for _ in range(n)], [m for m in metas for _ in range(n)]
            scored = sampler.score(prompts, texts, metas, groups, ids)
        return RolloutBatch(
            prompt_ids=prompt_ids.repeat_interleave(n, 0), prompt_mask=prompt_mask.repeat_interleave(n, 0),
            completion_ids=generation.completion_ids, completion_mask=mask, metas=metas, group_size=n,
            behaviour_logps=generation.logps, prompts=prompts, texts=texts, **scored)


def replay(sampler: Sampler, batch: StoredGroups) -> RolloutBatch:
    """A rollout batch from stored groups (:class:`lit_rl.OfflineData`): the data's completions, rewards and
    behaviour log-probs; token ids are used as stored, or the text is tokenised when they are absent."""
    policy, device = sampler.policy, sampler.device
    n = len(batch.completions[0])
    stored_ids = [ids for group in batch.completion_ids for ids in (group or [None] * n)]
    if any(ids is None for ids in stored_ids):
        completion_ids, completion_mask = policy.encode_completions([c for group in batch.completions for c in group])
    else:
        completion_ids, completion_mask = policy.pad(stored_ids, left=False)
    if any(ids is None for ids in batch.prompt_ids):
        prompt_ids, prompt_mask = sampler.encode(batch.prompt, completion_ids.shape[1])
    else:
        prompt_ids, prompt_mask = policy.pad(batch.prompt_ids, left=True)
    behaviour = None
    if all(group is not None for group in batch.behaviour_logps) and not any(i is None for i in stored_ids):
        behaviour = torch.zeros(completion_ids.shape, device=device)
        for row, values in enumerate(v for group in batch.behaviour_logps for v in group):
            behaviour[row, :len(values)] = torch.tensor(values, device=device)
    rewards = [r for group in batch.rewards for r in group]
    correct = [float("nan") if c is None else float(c) for group in batch.correct for c in group]
    return RolloutBatch(
        prompt_ids=prompt_ids.repeat_interleave(n, 0), prompt_mask=prompt_mask.repeat_interleave(n, 0),
        completion_ids=completion_ids, completion_mask=completion_mask,
        scores=torch.tensor(rewards, dtype=torch.float32, device=device), correct=torch.tensor(correct, device=device),
        metas=[m for m in batch.meta for _ in range(n)], group_size=n, behaviour_logps=behaviour, source="dataset",
        prompts=[p for p in batch.prompt for _ in range(n)], texts=[c for group in batch.completions for c in group])
