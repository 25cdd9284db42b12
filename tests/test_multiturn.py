"""Multi-turn episodes: the collector's masks, token in and token out, what the loss reads, and training."""

import json
from dataclasses import replace

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.loggers import CSVLogger
from torch.testing import assert_close

from conftest import fit
from lit_rl import GRPO, PPO, RLOO, CountdownData, Environment, EnvStep, HFEngine, MultiTurn, Policy
from lit_rl import REINFORCE, ReMax, Sampling
from lit_rl.collect import Sampler
from lit_rl.objectives.ppo import gae

SAMPLING = Sampling(temperature=1.0, max_new_tokens=6)


class Script(Environment):
    """Says ``observation`` after every model turn until the ``done_after``-th; 0.5 reward a turn; the episode
    is "correct" when the target is even (a fixed, checkable judgement)."""

    def __init__(self, observation: str = "no, again:\n", done_after: int = 3) -> None:
        self.observation, self.done_after = observation, done_after
        self.seen: list[str] = []

    def reset(self, prompt, columns) -> None:
        self.seen, self.target = [], columns["target"]

    def step(self, completion: str) -> EnvStep:
        self.seen.append(completion)
        return EnvStep(observation=self.observation, reward=0.5, done=len(self.seen) >= self.done_after,
                       correct=self.target % 2 == 0)


class Recording(HFEngine):
    """HF ``generate`` that keeps what it returned, to compare the episode's tokens with the engine's."""

    def __init__(self) -> None:
        super().__init__()
        self.outputs: list[list[list[int]]] = []

    def generate(self, prompt_ids, prompt_mask, sampling, n=1):
        generation = super().generate(prompt_ids, prompt_mask, sampling, n)
        self.outputs.append([ids[m.bool()].tolist() for ids, m in zip(generation.completion_ids, generation.completion_mask)])
        return generation


def prompts(n: int = 2) -> dict:
    dm = CountdownData(batch_size=n, train_size=16, val_size=4, num_numbers=3, max_number=9, seed=0)
    dm.setup()
    return next(iter(dm.train_dataloader()))


def spans(mask: list[int]) -> list[tuple[int, int, int]]:
    """Runs of equal values: ``(value, start, end)``."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((mask[start], start, i))
            start = i
    return out


def test_observation_tokens_are_attended_to_but_not_trained_and_model_tokens_are_the_engines(tiny_model_dir):
    torch.manual_seed(0)
    policy, engine = Policy.load(tiny_model_dir), Recording()
    engine.bind(policy.model, policy.tokenizer)
    batch = prompts(2)
    rollout = MultiTurn(Script(), max_turns=3).collect(Sampler(policy, engine), batch["prompt"], batch["meta"],
                                                       SAMPLING, n=2)
    assert len(rollout) == 4 and len(engine.outputs) == 3               # one engine call a turn for all episodes
    observation = policy.tokenize("no, again:\n")
    for row in range(4):
        length = int(rollout.completion_mask[row].sum())
        assert rollout.completion_mask[row, :length].all() and not rollout.completion_mask[row, length:].any()
        ids, trained = rollout.completion_ids[row, :length].tolist(), rollout.loss_mask[row, :length].tolist()
        runs = spans(trained)
        assert [v for v, _, _ in runs] == [1, 0, 1, 0, 1]                # turn, observation, turn, observation, turn
        for turn, (_, a, b) in enumerate(runs[::2]):                    # the engine's tokens, not re-tokenised text
            assert ids[a:b] == engine.outputs[turn][row]
        for _, a, b in runs[1::2]:
            assert ids[a:b] == observation
        assert [m["role"] for m in rollout.turns[row]] == ["assistant", "user"] * 2 + ["assistant"]
        assert rollout.turns[row][1]["content"] == "no, again:\n"
    assert_close(rollout.scores, torch.full((4,), 1.5))                 # three turns of 0.5, no module reward
    targets = [m["target"] for m in rollout.metas]
    assert rollout.correct.tolist() == [float(t % 2 == 0) for t in targets]
    assert not rollout.truncated.any()


def test_an_episode_that_would_overflow_its_budget_is_truncated_not_crashed(tiny_model_dir):
    torch.manual_seed(0)
    policy = Policy.load(tiny_model_dir)
    engine = HFEngine()
    engine.bind(policy.model, policy.tokenizer)
    batch = prompts(2)
    long = Script(observation="a very long answer that does not fit. " * 4, done_after=5)
    rollout = MultiTurn(long, max_turns=5, max_tokens=30).collect(Sampler(policy, engine), batch["prompt"],
                                                                   batch["meta"], SAMPLING)
    assert rollout.truncated.all() and (rollout.completion_mask.sum(-1) <= 30).all()
    assert (rollout.loss_mask == rollout.completion_mask).all()         # the observation was never appended


class Raising(Environment):
    def step(self, completion):
        raise KeyError("no such state")


class Malformed(Environment):
    def step(self, completion):
        return EnvStep(observation=[{"role": "user", "content": 3}])


def test_an_environment_that_raises_is_named_with_its_episode(tiny_model_dir):
    policy = Policy.load(tiny_model_dir)
    engine = HFEngine()
    engine.bind(policy.model, policy.tokenizer)
    batch = prompts(1)
    with pytest.raises(RuntimeError, match=r"environment Raising failed at turn 1 of the episode of prompt 'Using.*"
                                           r"KeyError: 'no such state'"):
        MultiTurn(Raising()).collect(Sampler(policy, engine), batch["prompt"], batch["meta"], SAMPLING)
    with pytest.raises(TypeError, match=r"Malformed.step returned the observation \[\{'role': 'user', 'content': 3\}\]"):
        MultiTurn(Malformed()).collect(Sampler(policy, engine), batch["prompt"], batch["meta"], SAMPLING)


def test_gae_skips_the_tokens_outside_the_mask():
    """GAE over a sequence with holes (an environment's tokens) equals GAE over the trained tokens alone, laid
    side by side: the holes pass the future through. float64 inputs, so the two orders of the same sums agree to
    float64 rounding."""
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 0, 1, 0], [1, 0, 1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.float64)
    values, rewards = torch.randn(2, 10, dtype=torch.float64), torch.randn(2, 10, dtype=torch.float64) * mask
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for row in range(2):
        kept = mask[row].bool()
        compact, compact_returns = gae(rewards[row, kept][None], values[row, kept][None], torch.ones(1, int(kept.sum()),
                                       dtype=torch.float64), gamma=0.9, lam=0.8)
        assert_close(advantages[row, kept], compact[0], rtol=0, atol=1e-12)
        assert_close(returns[row, kept], compact_returns[0], rtol=0, atol=1e-12)
        assert (advantages[row, ~kept] == 0).all()


@pytest.mark.parametrize("algorithm", [GRPO, PPO])
def test_what_is_written_in_observation_positions_changes_no_loss_or_gradient(tiny_model_dir, algorithm):
    """Every per-token field the loss reads (old, reference and behaviour log-probs, advantages, values, returns,
    importance weights) may hold anything at an environment's positions: the loss and its gradient are the same,
    bitwise (one computation, twice, on one machine)."""
    seed_everything(0)
    module = algorithm(model=tiny_model_dir, group_size=2, sampling=SAMPLING, kl_coef=0.1, num_iterations=2,
                       collector=MultiTurn(Script(done_after=2), max_turns=2), reward=None)
    rollout = module.make_rollout(prompts(2))
    hidden = (rollout.completion_mask.bool() & ~rollout.loss_mask.bool())
    assert hidden.any()
    garbage = {}
    for name in ("old_logps", "ref_logps", "behaviour_logps", "advantages", "values", "returns", "is_weights"):
        value = getattr(rollout, name)
        if value is not None and value.dim() == 2:
            garbage[name] = torch.where(hidden, torch.randn_like(value) * 1e3, value)
    assert {"old_logps", "ref_logps"} <= set(garbage)
    params = [p for p in module.parameters() if p.requires_grad]

    def loss_and_grads(batch):
        loss = module.micro_loss(batch, module.normalisers(batch))[0]
        return loss, torch.autograd.grad(loss, params, allow_unused=True)

    loss, grads = loss_and_grads(rollout)
    other_loss, other_grads = loss_and_grads(replace(rollout, **garbage))
    assert torch.equal(loss, other_loss)
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads, other_grads))


@pytest.mark.parametrize("algorithm", [GRPO, RLOO, REINFORCE, ReMax, PPO])
def test_every_on_policy_algorithm_trains_on_episodes(tiny_model_dir, tmp_path, algorithm):
    """Two steps of each on-policy algorithm on a multi-turn collector (ReMax's greedy baseline is a greedy
    episode); the completion log shows each turn and observation."""
    seed_everything(0)
    group = 1 if algorithm is ReMax else 2
    module = algorithm(model=tiny_model_dir, group_size=group, sampling=SAMPLING,
                       val_sampling=Sampling(temperature=0.0, max_new_tokens=6),
                       collector=MultiTurn(Script(done_after=2), max_turns=2))
    dm = CountdownData(batch_size=2, train_size=16, val_size=2, num_numbers=3, max_number=9, seed=0)
    trainer = fit(module, dm, 2, logger=CSVLogger(tmp_path, name="", version=""))
    assert trainer.global_step >= 2
    lines = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert lines and all([t["role"] for t in line["turns"]] == ["assistant", "user", "assistant"] for line in lines)
    assert all(line["reward"] == 1.0 for line in lines)                 # two turns of 0.5
