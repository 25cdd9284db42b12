"""Reward functions written for TRL run unchanged: called by keyword as TRL 1.16's ``GRPOTrainer._calculate_rewards``
calls them (``prompts=``, ``completions=``, ``completion_ids=`` and the dataset columns), completions as one
assistant message each when the prompts are conversations, ``async def`` functions awaited together, ``None`` as
no opinion. TRL is not a test dependency: the functions below are written in TRL's style (its quick-start
``reward_len``, and ``trl.rewards.accuracy_reward``'s signature) and record what they were given."""

import json
import re
import textwrap

import pytest
import torch
from lightning.pytorch import seed_everything

from lit_rl import GRPO, FunctionReward, PromptData, Rewards, Sampling
from lit_rl.rewards import score_batch

from conftest import fit

TRL_STYLE = textwrap.dedent('''
    import asyncio

    calls = []
    started = []

    def reward_len(completions, **kwargs):                       # TRL's quick start
        calls.append(("reward_len", completions, kwargs))
        return [-abs(20 - len(completion[0]["content"])) / 20 for completion in completions]

    def accuracy_reward(completions, solution, log_extra=None, **kwargs):   # trl.rewards.accuracy_reward's signature
        calls.append(("accuracy_reward", completions, {"solution": solution, **kwargs}))
        return [None if s is None else float(c[0]["content"].strip() == s) for c, s in zip(completions, solution)]

    async def digits(prompts, completions, completion_ids, target, **kwargs):
        calls.append(("digits", completions, {"prompts": prompts, "completion_ids": completion_ids, "target": target}))
        started.append("digits")
        for _ in range(3):
            await asyncio.sleep(0)
        seen = len(started)
        return [None if t % 2 else float(sum(ch.isdigit() for ch in c[0]["content"]) + seen)
                for c, t in zip(completions, target)]

    def hangs(completions, **kwargs):
        import time
        time.sleep(3)
        return [0.0 for _ in completions]

    async def hangs_async(completions, **kwargs):
        await asyncio.sleep(3)
        return [0.0 for _ in completions]

    def slow(completions, **kwargs):
        import time
        time.sleep(0.3)
        return [1.0 for _ in completions]

    async def raises_its_own_timeout(completions, **kwargs):
        raise TimeoutError("the judge API timed out")

    async def other(completions, **kwargs):
        started.append("other")
        for _ in range(3):
            await asyncio.sleep(0)
        return [0.0 for _ in completions]
''')


@pytest.fixture
def trl_style(tmp_path, monkeypatch):
    (tmp_path / "trl_style.py").write_text(TRL_STYLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import trl_style

    return importlib.reload(trl_style)


CHAT = [[{"role": "user", "content": "numbers [1, 2] target 3: "}], [{"role": "user", "content": "numbers [4] target 4: "}]]


def test_functions_get_trls_keywords_and_conversational_completions(trl_style):
    rewards = Rewards([FunctionReward("trl_style:reward_len"), FunctionReward("trl_style:accuracy_reward")])
    metas = [{"solution": "1 + 2", "target": 3}, {"solution": None, "target": 4}]
    scores = score_batch(rewards, CHAT, ["1 + 2", "44"], metas, completion_ids=[[5, 6, 7], [8, 8]])
    assert [s.reward for s in scores] == [-15 / 20 + 1.0, -18 / 20]                 # None: accuracy has no opinion
    (name, completions, kwargs), _ = trl_style.calls
    assert name == "reward_len" and completions == [[{"role": "assistant", "content": "1 + 2"}],
                                                    [{"role": "assistant", "content": "44"}]]
    assert kwargs == {"prompts": CHAT, "completion_ids": [[5, 6, 7], [8, 8]], "solution": ["1 + 2", None],
                      "target": [3, 4]}
    text = FunctionReward("trl_style:reward_len", conversational=False)
    with pytest.raises(RuntimeError, match="reward function trl_style:reward_len failed .*TypeError: string indices"):
        score_batch(text, CHAT, ["1 + 2"], [{}])                                   # asked for text: text it gets


def test_async_functions_are_awaited_together(trl_style):
    """Each async function yields three times before it looks how many have started: run one after the other
    the first would see 1, awaited together it sees 2."""
    rewards = Rewards([FunctionReward("trl_style:digits"), FunctionReward("trl_style:other")])
    scores = score_batch(rewards, CHAT, ["12", "3"], [{"target": 2}, {"target": 2}])
    assert [s.reward for s in scores] == [2 + 2.0, 1 + 2.0] and trl_style.started == ["digits", "other"]
    alone = score_batch(FunctionReward("trl_style:digits"), CHAT[:1], ["12"], [{"target": 2}])
    assert [s.reward for s in alone] == [2 + 3.0]                                   # a lone async function runs too


def test_two_trl_style_functions_train_on_a_conversational_dataset(trl_style, tiny_model_dir, tmp_path):
    """End to end: chat prompts, a sync and an async TRL-style function, no opinion on odd targets, two GRPO
    steps; the async function saw the generated token ids of exactly the completions it scored."""
    path = tmp_path / "chat.jsonl"
    rows = [{"prompt": [{"role": "user", "content": f"numbers [{t}, 1] target {t + 1}: "}], "target": t + 1}
            for t in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seed_everything(0)
    module = GRPO(model=tiny_model_dir, group_size=2, sampling=Sampling(temperature=1.0, max_new_tokens=8),
                  reward=Rewards([FunctionReward("trl_style:reward_len"), FunctionReward("trl_style:digits")]))
    fit(module, PromptData(str(path), batch_size=2), 2)
    assert module.global_step == 2
    digits = [kwargs for name, _, kwargs in trl_style.calls if name == "digits"]
    assert len(digits) == 2
    tokenizer = module.policy.tokenizer
    for (name, completions, _), kwargs in zip([c for c in trl_style.calls if c[0] == "digits"], digits):
        assert all(isinstance(p, list) and p[0]["role"] == "user" for p in kwargs["prompts"])
        texts = [c[0]["content"] for c in completions]
        decoded = tokenizer.batch_decode(kwargs["completion_ids"], skip_special_tokens=True)
        assert decoded == texts and all(isinstance(i, int) for ids in kwargs["completion_ids"] for i in ids)
    assert torch.isfinite(torch.tensor([p.detach().abs().sum() for p in module.policy.parameters()])).all()


@pytest.mark.parametrize("function", ["hangs", "hangs_async"])
def test_a_reward_past_its_timeout_stops_the_run_by_name(trl_style, function):
    reward = FunctionReward(f"trl_style:{function}", timeout=0.2)
    with pytest.raises(TimeoutError, match=rf"reward function trl_style:{function} did not return within its timeout "
                                           r"of 0.2 s on a batch of 1 completions"):
        score_batch(reward, ["p"], ["c"], [{}])
    with pytest.raises(ValueError, match="timeout must be positive"):
        FunctionReward("trl_style:hangs", timeout=0)


def test_a_slow_reward_is_named_and_its_own_timeout_error_is_not_taken_for_ours(trl_style, caplog):
    with caplog.at_level("WARNING", logger="lit_rl.rewards.function"):
        assert [s.reward for s in score_batch(FunctionReward("trl_style:slow", warn_after=0.1, timeout=5), ["p"],
                                              ["c"], [{}])] == [1.0]
    assert re.search(r"reward function trl_style:slow took \d+\.\d s on a batch of 1 completions \(warn_after: 0\.1",
                     caplog.text), caplog.text
    with pytest.raises(RuntimeError, match="failed on a batch of 1 completions .*TimeoutError: the judge API"):
        score_batch(FunctionReward("trl_style:raises_its_own_timeout", timeout=5), ["p"], ["c"], [{}])
