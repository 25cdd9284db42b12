"""max_staleness: rollouts sampled and scored in a background thread while the policy trains (lit_rl.async_rollouts).

The engine is ``CopyEngine`` (``transformers`` ``generate`` on a frozen copy of the policy, refreshed on every
sync): a real engine with weights of its own, on CPU without vLLM, so these runs take seconds. The same module code
drives ``VLLMServerEngine``; ``tests/test_vllm_server.py`` runs one asynchronous GRPO fit on a real server."""

import copy
from itertools import islice

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.testing import assert_close

from lit_rl import (ERPD, GRPO, RLOO, CopyEngine, CountdownData, HFEngine, ImportanceSampling, RewardFunction,
                    RolloutCallback, Score, VLLMEngine)
from lit_rl.tasks.countdown import CountdownReward
from lit_rl.timing import is_wall_clock

from conftest import SAMPLING, fit

STEPS = 4


class DigitShare(RewardFunction):
    """Share of digits in the text: varies from sample to sample, so every step has a gradient."""

    def __call__(self, completion, meta):
        return Score(sum(c.isdigit() for c in completion) / max(1, len(completion)))


def data() -> CountdownData:
    dm = CountdownData(batch_size=2, val_batch_size=4, train_size=32, val_size=4)
    dm.setup()
    return dm


def rloo(model_dir, **kwargs) -> RLOO:
    torch.manual_seed(0)
    return RLOO(**{"model": model_dir, "group_size": 2, "sampling": SAMPLING, "reward": DigitShare(),
                   "optimizer": lambda p: torch.optim.AdamW(p, lr=3e-2, weight_decay=0.0), **kwargs})


class Record(RolloutCallback):
    """Per step: the prompts trained, the rollout's policy version, its behaviour log-probs against those of the
    weights of that version (kept at the start of every step) and of the policy being trained, and the metrics."""

    def __init__(self) -> None:
        self.prompts, self.versions, self.metrics, self.gaps = [], [], [], []
        self.weights: dict[int, dict] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.weights[trainer.global_step] = copy.deepcopy(module.policy.model.state_dict())

    def on_rollout_end(self, trainer, module, rollout) -> None:
        self.prompts.append(rollout.prompts[::rollout.group_size])
        self.versions.append(rollout.version)
        if rollout.behaviour_logps is None:
            return
        sampler = copy.deepcopy(module.policy.model)
        sampler.load_state_dict(self.weights[rollout.version])
        args = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
        with torch.no_grad():
            sampling_logps = module.policy.logps(*args, 1.0, model=sampler)[0] * rollout.loss_mask
        trained = rollout.old_logps
        self.gaps.append(((rollout.behaviour_logps - sampling_logps).abs().max().item(),
                          (rollout.behaviour_logps - trained).abs().max().item()))

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items() if not is_wall_clock(k)})


def dataloader_prompts(steps: int) -> list[list[str]]:
    return [batch["prompt"] for batch in islice(data().train_dataloader(), steps)]


def test_max_staleness_0_is_the_synchronous_run(tiny_model_dir):
    """k = 0 runs the synchronous loop: the same weights and the same logged values as a module without it."""
    runs = []
    for kwargs in ({}, {"max_staleness": 0}):
        record = Record()
        module = rloo(tiny_model_dir, **kwargs)
        fit(module, data(), 3, callbacks=[record])
        runs.append((module.state_dict(), record.metrics))
    (weights, metrics), (weights0, metrics0) = runs
    assert weights.keys() == weights0.keys() and all(torch.equal(weights[k], weights0[k]) for k in weights)
    assert metrics == metrics0 and "train/loss" in metrics[-1] and "rollout/staleness" not in metrics[-1]


def test_an_async_run_trains_one_step_behind_on_the_engines_log_probs(tiny_model_dir):
    """k = 1, a sync after every step: batch s was sampled by the weights of step s - 1 (step 0's by the
    initial ones), so rollout/staleness is 0, 1, 1, 1; the batches are the dataloader's, in its order; the behaviour
    log-probs are the engine's, those of the weights that sampled them (within float32 rounding of a cached decode
    against one forward), and a step behind they differ from the trained policy's, which the truncated importance
    weights correct for."""
    record, engine = Record(), CopyEngine()
    module = rloo(tiny_model_dir, engine=engine, max_staleness=1, importance_sampling=ImportanceSampling(cap=2.0))
    fit(module, data(), STEPS, callbacks=[record])
    assert [m["rollout/staleness"] for m in record.metrics] == [0.0, 1.0, 1.0, 1.0]
    assert record.versions == [0, 0, 1, 2]
    assert record.prompts == dataloader_prompts(STEPS)
    assert all(engine_gap < 1e-4 for engine_gap, _ in record.gaps), record.gaps
    assert record.gaps[0][1] < 1e-4 and all(trained_gap > 1e-3 for _, trained_gap in record.gaps[1:]), record.gaps
    assert all(0 < m["rollout/is_weight_mean"] and m["rollout/is_weight_max"] <= 2.0 + 1e-6 for m in record.metrics)
    assert record.metrics[-1]["rollout/is_masked_frac"] == 0 and engine.version == 1 + STEPS   # start + each step
    assert module.rollouts is None and all(torch.isfinite(p).all() for p in module.parameters())


def test_sequence_rejection_drops_the_stale_samples(tiny_model_dir):
    """k = 1 with sequences rejected outside a geometric-mean ratio of [0.99, 1.01]: step 0 trains on the weights
    that sampled it and keeps every sample; a step behind, samples the update moved by more than 1% per token on
    average are dropped (weight 0), and those kept are truncated at the cap."""
    record = Record()
    setting = ImportanceSampling("reject_sequence", cap=1.2, low=0.99, high=1.01)
    fit(rloo(tiny_model_dir, engine=CopyEngine(), max_staleness=1, importance_sampling=setting), data(), STEPS,
        callbacks=[record])
    dropped = [m["rollout/is_masked_frac"] for m in record.metrics]
    assert dropped[0] == 0 and all(d > 0 for d in dropped[1:]), dropped
    assert all(m["rollout/is_weight_max"] <= 1.2 + 1e-6 for m in record.metrics), record.metrics  # float32 e^ln 1.2


def test_validation_and_a_logging_collect_run_beside_the_producer(tiny_model_dir):
    """k = 2: batches 0-2 come from the initial weights, batch s >= 2 from those of step s - 2. GRPO's dynamic
    sampling logs from its collect, which runs on the producer thread: the value reaches the step that trains that
    rollout. Validation every 2 steps waits for the producer and uses the engine alone."""
    record = Record()
    torch.manual_seed(0)
    module = GRPO(model=tiny_model_dir, group_size=2, sampling=SAMPLING, reward=DigitShare(), dynamic_sampling=True,
                  max_resample_rounds=1, engine=CopyEngine(), max_staleness=2, val_sampling=SAMPLING.greedy)
    fit(module, data(), STEPS, callbacks=[record], limit_val_batches=1, val_check_interval=2)
    assert [m["rollout/staleness"] for m in record.metrics] == [0.0, 1.0, 2.0, 2.0]
    assert all("rollout/resample_rounds" in m for m in record.metrics)
    assert "val/reward_mean" in record.metrics[-1] and record.prompts == dataloader_prompts(STEPS)


def test_a_resumed_async_run_trains_the_same_prompts_in_the_same_order(tiny_model_dir, tmp_path):
    """Straight for 4 steps, or 2 steps, a checkpoint and a resume to 4: the same batches in the same order. The
    rollouts generated ahead at the checkpoint are not in it: the resumed run regenerates them with the
    checkpoint's weights (version 2, staleness 0 at its first step), so its weights differ from the straight run's
    (as any two asynchronous runs' do: see lit_rl.async_rollouts)."""
    straight = Record()
    fit(rloo(tiny_model_dir, engine=CopyEngine(), max_staleness=1), data(), STEPS, callbacks=[straight])
    first, resumed = Record(), Record()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    fit(rloo(tiny_model_dir, engine=CopyEngine(), max_staleness=1), data(), 2, callbacks=[first, checkpoint])
    torch.manual_seed(123)                                              # the resumed process starts elsewhere
    fit(rloo(tiny_model_dir, engine=CopyEngine(), max_staleness=1), data(), STEPS, callbacks=[resumed],
        ckpt_path=str(tmp_path / "last.ckpt"))
    assert first.prompts + resumed.prompts == straight.prompts == dataloader_prompts(STEPS)
    assert resumed.versions == [2, 2] and [m["rollout/staleness"] for m in resumed.metrics] == [0.0, 1.0]


def test_an_error_while_generating_ahead_stops_the_run_with_that_error(tiny_model_dir):
    """The producer's error is raised on the trainer's thread as it was raised (here the reward's named error for
    batch 1, found while step 0 trained, before the engine is synced)."""
    class Fails(RewardFunction):
        calls = 0

        def __call__(self, completion, meta):
            Fails.calls += 1
            if Fails.calls > 6:                                         # the second batch's rows
                raise KeyError("the reward failed on the producer thread")
            return Score(0.5)

    module = rloo(tiny_model_dir, engine=CopyEngine(), max_staleness=1, reward=Fails())
    with pytest.raises(RuntimeError, match="reward Fails failed on sample 2 .*the reward failed on the producer"):
        fit(module, data(), STEPS)
    module.stop_rollouts()


@pytest.mark.parametrize("engine, message", [
    (None, r"max_staleness=1 .* HFEngine cannot generate there: it samples with the training model itself"),
    (VLLMEngine(), r"VLLMEngine cannot generate there: its in-process vLLM engine is made to run on the thread"),
], ids=["HFEngine", "VLLMEngine"])
def test_engines_that_cannot_generate_in_the_background_are_refused(tiny_model_dir, engine, message):
    with pytest.raises(ValueError, match=message):
        RLOO(model=tiny_model_dir, reward=CountdownReward(), engine=engine, max_staleness=1)


def test_bad_async_settings_are_named(tiny_model_dir):
    with pytest.raises(ValueError, match="max_staleness must be >= 0"):
        RLOO(model=tiny_model_dir, reward=CountdownReward(), max_staleness=-1)
    with pytest.raises(ValueError, match="importance_sampling or importance_sampling_cap"):
        RLOO(model=tiny_model_dir, reward=CountdownReward(), importance_sampling=ImportanceSampling(),
             importance_sampling_cap=2.0)
    with pytest.raises(ValueError, match="ERPD does not generate ahead"):
        ERPD(model=tiny_model_dir, reward=CountdownReward(), engine=CopyEngine(), max_staleness=1)


def test_the_cap_is_the_truncate_mode(tiny_model_dir):
    """``importance_sampling_cap: C`` (older configs) is ``importance_sampling: {mode: truncate, cap: C}``."""
    module = RLOO(model=tiny_model_dir, reward=CountdownReward(), importance_sampling_cap=1.5)
    assert module.importance_sampling == ImportanceSampling("truncate", cap=1.5)


def test_the_copy_engine_samples_from_its_copy_until_synced(tiny_model_dir):
    """The copy is the policy's weights as of the last sync: a change to the policy reaches it only on sync."""
    module = rloo(tiny_model_dir, engine=CopyEngine())
    engine, policy = module.engine, module.policy
    ids, mask = policy.encode_prompts(["numbers [1, 2] target 3: ", "numbers [4, 5] target 9: "], 8)

    def greedy(engine_):
        generation = engine_.generate(ids, mask, SAMPLING.greedy)
        return generation.completion_ids * generation.completion_mask

    before = greedy(engine)
    with torch.no_grad():
        policy.model.model.norm.weight.mul_(-1.0)                       # logits negated: greedy picks the least likely
    hf = HFEngine()
    hf.bind(policy.model, policy.tokenizer)
    assert torch.equal(greedy(engine), before) and not torch.equal(greedy(hf), before)
    engine.sync_weights(policy.model)
    assert torch.equal(greedy(engine), greedy(hf)) and engine.version == 1
    assert_close(engine.model.model.norm.weight, policy.model.model.norm.weight, rtol=0, atol=0)


def test_the_cli_trains_and_resumes_an_async_run(tmp_path, tiny_model_dir):
    """``lit-rl fit`` with ``max_staleness``, ``importance_sampling`` and ``CopyEngine`` from the command line: the
    settings are saved with the checkpoint (and load with torch's safe unpickler), and a resume of it is the same
    run (checked by lit-rl's resume) and goes on logging the staleness and the weights' statistics."""
    from test_cli import run_cli

    from conftest import ROOT

    args = ["--config", str(ROOT / "cli_configs" / "rloo.yaml"), "--model.init_args.model", tiny_model_dir,
            "--trainer.default_root_dir", str(tmp_path / "runs"), "--model.init_args.sampling.max_new_tokens", "8",
            "--data.init_args.batch_size", "2", "--model.init_args.val_sampling.max_new_tokens", "8",
            "--data.init_args.val_size", "4", "--model.init_args.max_staleness", "1",
            "--model.init_args.engine", "lit_rl.CopyEngine", "--model.init_args.importance_sampling.mode", "mask"]
    first = run_cli("fit", *args, "--trainer.max_steps", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "rloo").iterdir()
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    resumed = run_cli("fit", *args, "--trainer.max_steps", "3", "--ckpt_path", str(checkpoint), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "same algorithm, model, data and settings" in resumed.stdout + resumed.stderr
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"rollout/staleness", "rollout/is_masked_frac", "time/wait_rollout"} <= set(header)
    staleness = [row.split(",")[header.index("rollout/staleness")] for row in rows[1:]]
    assert [float(s) for s in staleness if s] == [0.0, 1.0, 0.0]        # steps 0, 1, and 2 resumed from step 2


def test_the_lockstep_schedule_fixes_which_weights_sample_which_batch():
    """The pipeline alone, with a stand-in producer that records the weight version it sees: for k = 0..3, batch s
    is produced with version max(0, s - k), whatever the threads' timing, and the trainer never waits past it."""
    from lit_rl.async_rollouts import RolloutPipeline
    from lit_rl.timing import PhaseTimer

    for k in range(4):
        state = {"version": 0}
        batches = [{"prompt": [f"p{s}"], "meta": [{}]} for s in range(8)]
        pipeline = RolloutPipeline(lambda batch: (batch["prompt"][0], state["version"]), iter(batches), k,
                                   PhaseTimer())
        seen = []
        for batch in batches[:6]:
            seen.append(pipeline.take(batch).rollout)
            pipeline.wait_for_schedule()
            state["version"] += 1                                       # the optimizer step and the sync
            pipeline.permit()
        pipeline.close()
        assert seen == [(f"p{s}", max(0, s - k)) for s in range(6)], (k, seen)


def test_a_dataloader_that_cannot_be_read_ahead_is_named():
    from lit_rl.async_rollouts import RolloutPipeline, read_ahead
    from lit_rl.timing import PhaseTimer

    with pytest.raises(ValueError, match="needs a dataloader whose order follows from its state_dict .* got list"):
        read_ahead([{"prompt": ["a"], "meta": [{}]}], {"prompt": ["a"], "meta": [{}]})
    pipeline = RolloutPipeline(lambda batch: batch, iter([{"prompt": ["a"], "meta": [{}]}]), 1, PhaseTimer())
    with pytest.raises(RuntimeError, match="made for other prompts than the batch Lightning handed this step"):
        pipeline.take({"prompt": ["b"], "meta": [{}]})
    pipeline.close()


def test_under_ddp_each_rank_generates_its_own_batches_ahead(tmp_path):
    """2 processes (DDP on CPU, tests/async_ddp_run.py): each rank's producer reads its own share of the batches
    ahead and trains it one step behind (staleness 0, 1, 1); the ranks train different prompts, together those of
    one process with twice the batch, and their engines follow every sync."""
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    result = subprocess.run([sys.executable, str(ROOT / "tests" / "async_ddp_run.py"), str(tmp_path)], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert [s["staleness"] for s in rank["steps"]] == [0.0, 1.0, 1.0]
        assert [s["version"] for s in rank["steps"]] == [0, 0, 1] and rank["syncs"] == 1 + 3
    one_process = CountdownData(batch_size=2, train_size=64, val_size=4)
    one_process.setup()
    order = [batch["prompt"] for batch in islice(one_process.train_dataloader(), 6)]
    assert [s["prompts"] for s in ranks[0]["steps"]] == order[0::2]
    assert [s["prompts"] for s in ranks[1]["steps"]] == order[1::2]
