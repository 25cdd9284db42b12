"""The shared loop: invariants on the module's own loss path, every algorithm end to end on a tiny model,
extension by one override, bad settings, NaN stops, and resuming."""

import random

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.testing import assert_close

from lit_rl.tasks.countdown import CountdownReward
from lit_rl import (GRPO, PPO, REINFORCE, RLOO, SFT, CompletionLog, CountdownData, GroupAdvantage, ReMax, RewardFunction,
                    RolloutRefresh, Score)
from lit_rl.data import ResumableBatches
from lit_rl.modules.base import RLModule
from lit_rl.objectives import LeaveOneOut, grpo_advantages, rloo_advantages, zero_std_groups

from conftest import SAMPLING, VAL, needs_bf16_attention
from conftest import fit as shared_fit


def data(**kwargs) -> CountdownData:
    dm = CountdownData(**{"batch_size": 4, "val_batch_size": 8, "train_size": 64, "val_size": 8, **kwargs})
    dm.setup()
    return dm


def prompts(n: int = 4) -> dict[str, list]:
    return next(iter(data(batch_size=n).train_dataloader()))


def fit(module, steps: int, tmp_path=None, **kwargs) -> Trainer:
    return shared_fit(module, data(), steps, root=tmp_path, **{"limit_val_batches": 1, **kwargs})


def grads(module, loss) -> list[torch.Tensor]:
    params = [p for p in module.policy.parameters() if p.requires_grad]
    return [g if g is not None else torch.zeros_like(p)
            for g, p in zip(torch.autograd.grad(loss, params, allow_unused=True), params)]


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"])
def test_micro_batches_give_the_full_batch_gradient(tiny_model_dir, aggregation):
    """1x8 and 8x1: the module's micro-batch losses (clip, old log-probs, KL in the loss) accumulate to the
    full batch's gradient, whatever the aggregation."""
    torch.manual_seed(0)
    module = GRPO(model=tiny_model_dir, reward=CountdownReward(), group_size=4, sampling=SAMPLING, aggregation=aggregation,
                  num_iterations=2, kl_coef=0.1)
    rollout = module.make_rollout(prompts(2))
    with torch.no_grad():                                               # move off the old policy: ratios != 1
        for p in module.policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    normalisers = module.normalisers(rollout)
    full = grads(module, module.micro_loss(rollout, normalisers)[0])
    accumulated = [torch.zeros_like(g) for g in full]
    for micro in rollout.split(1):
        for acc, g in zip(accumulated, grads(module, module.micro_loss(micro, normalisers)[0])):
            acc += g
    for a, f in zip(accumulated, full):
        assert_close(a, f, rtol=1e-4, atol=1e-6)
    assert sum(f.abs().sum() for f in full) > 0


def test_old_logps_equal_current_logps_right_after_the_rollout(tiny_model_dir):
    torch.manual_seed(0)
    module = GRPO(model=tiny_model_dir, reward=CountdownReward(), group_size=2, sampling=SAMPLING, num_iterations=2,
                  log_kl=True)
    rollout = module.make_rollout(prompts(2))
    logps, _ = module.policy.logps(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                                   rollout.completion_mask, SAMPLING.temperature)
    assert_close(rollout.old_logps, logps * rollout.completion_mask, rtol=1e-5, atol=1e-5)
    assert_close(rollout.ref_logps, rollout.old_logps, rtol=1e-5, atol=1e-5)   # nothing trained yet


ALGORITHMS = [
    (REINFORCE, {"baseline": "moving_average"}),
    (ReMax, {"group_size": 2, "kl_coef": 0.05, "kl_in_reward": True}),
    (RLOO, {"group_size": 2}),
    (GRPO, {"group_size": 2, "num_iterations": 2, "mini_batches": 2, "eps_high": 0.28}),
]


@pytest.mark.parametrize("cls, kwargs", ALGORITHMS, ids=lambda x: getattr(x, "__name__", ""))
def test_every_algorithm_trains_and_logs(tiny_model_dir, cls, kwargs):
    torch.manual_seed(0)
    module = cls(model=tiny_model_dir, reward=CountdownReward(), sampling=SAMPLING, val_sampling=VAL, **kwargs)
    before = [p.detach().clone() for p in module.policy.parameters()]
    steps = 4 * module.num_iterations * module.mini_batches            # optimizer steps for 4 rollouts
    trainer = fit(module, steps, val_check_interval=2)
    assert trainer.global_step == steps
    assert any(not torch.equal(b, p) for b, p in zip(before, module.policy.parameters()))
    logged = set(trainer.callback_metrics)
    for key in ("rollout/reward_mean", "rollout/reward_std", "rollout/accuracy", "rollout/completion_length",
                "train/loss", "train/entropy", "train/grad_norm", "val/accuracy", "val/reward_mean"):
        assert key in logged, key
    assert ("train/kl" in logged) == (module.kl_coef > 0)                # log_kl is off by default
    if cls is not REINFORCE:
        assert "rollout/frac_zero_std_groups" in logged
    if cls is GRPO:
        assert "train/clip_frac" in logged


def test_without_a_kl_penalty_the_reference_costs_nothing_unless_log_kl_asks(tiny_model_dir):
    """``kl_coef = 0``: no reference copy, no reference forward, no ``ref_logps``; ``log_kl`` brings all three
    back, and the loss is the same either way (the KL is only logged)."""
    rows = prompts(2)
    losses = {}
    for log_kl in (False, True):
        torch.manual_seed(0)
        module = RLOO(model=tiny_model_dir, reward=CountdownReward(), group_size=2, sampling=SAMPLING, log_kl=log_kl)
        assert module.policy.has_reference == log_kl
        rollout = module.make_rollout(rows)
        assert (rollout.ref_logps is not None) == log_kl
        losses[log_kl], stats = module.micro_loss(rollout, module.normalisers(rollout))
        assert ("kl" in stats) == log_kl
    assert_close(losses[False], losses[True], rtol=0, atol=0)


def test_sft_lowers_its_loss(tiny_model_dir):
    torch.manual_seed(0)
    module = SFT(model=tiny_model_dir, reward=CountdownReward(), val_sampling=VAL, optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    dm = data(demonstrations=True, batch_size=16)
    batch = next(iter(dm.train_dataloader()))
    first = module.loss(batch).item()
    trainer = Trainer(accelerator="cpu", max_steps=30, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    assert module.loss(batch).item() < 0.7 * first


class CenteredReturn(RLModule):
    """A new algorithm in one override: advantage = reward minus the batch's mean reward."""

    seen: list = []

    def advantages(self, rollout):
        advantages = rollout.rewards - rollout.rewards.mean()
        self.seen.append((rollout.rewards.clone(), advantages))
        return advantages


def test_a_new_objective_is_one_overridden_method(tiny_model_dir):
    torch.manual_seed(0)
    module = CenteredReturn(model=tiny_model_dir, reward=CountdownReward(), group_size=2, sampling=SAMPLING, val_sampling=VAL)
    fit(module, 2, limit_val_batches=0)
    assert len(module.seen) == 2
    for rewards, advantages in module.seen:
        assert_close(advantages, rewards - rewards.mean())


class ExplodesAtStep2(RLOO):
    def policy_loss(self, logps, batch):
        loss, clipped = super().policy_loss(logps, batch)
        return (loss * float("nan") if self.global_step >= 2 else loss), clipped


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    module = ExplodesAtStep2(model=tiny_model_dir, reward=CountdownReward(), group_size=2, sampling=SAMPLING, val_sampling=VAL)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True, save_top_k=-1)
    with pytest.raises(FloatingPointError, match="loss is nan at global step 2"):
        fit(module, 5, tmp_path, callbacks=[checkpoint], limit_val_batches=0)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2
    for name, value in module.state_dict().items():                    # the weights were not stepped with NaN
        assert torch.isfinite(value).all() and torch.equal(saved["state_dict"][name], value), name


def test_resume_restores_module_and_callback_state(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    module = REINFORCE(model=tiny_model_dir, reward=CountdownReward(), sampling=SAMPLING, val_sampling=VAL)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    fit(module, 2, tmp_path, callbacks=[checkpoint, RolloutRefresh(every_n_steps=2)], limit_val_batches=0)
    ema = module.reward_ema.clone()
    resumed = REINFORCE(model=tiny_model_dir, reward=CountdownReward(), sampling=SAMPLING, val_sampling=VAL)
    seen = {}

    class Probe(Callback):                                              # reads state at the first resumed batch
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("ema", pl_module.reward_ema.clone())
            seen.setdefault("synced", pl_module.synced_step)

    trainer = fit(resumed, 3, tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path / "2"), RolloutRefresh(2), Probe()],
                  ckpt_path=str(tmp_path / "last.ckpt"), limit_val_batches=0)
    assert trainer.global_step == 3 and int(resumed.reward_ema_steps) == 3
    assert_close(seen["ema"], ema) and seen["synced"] == 2


def test_module_callbacks_do_not_override_the_users_and_an_old_refresh_callback_sets_the_module(tiny_model_dir):
    module = RLOO(model=tiny_model_dir, reward=CountdownReward(), group_size=2, sampling=SAMPLING, val_sampling=VAL)
    trainer = fit(module, 1, callbacks=[RolloutRefresh(every_n_steps=7), CompletionLog(per_step=1)],
                  limit_val_batches=0)
    assert [c.per_step for c in trainer.callbacks if isinstance(c, CompletionLog)] == [1]
    assert module.sync_every_n_steps == 7 and module.synced_step == 0       # synced on start, not after step 1


def test_an_advantage_estimator_replaces_the_algorithms_and_the_old_callback_sets_it(tiny_model_dir):
    """``advantage_estimator`` is a module setting; ``GroupAdvantage`` (old YAMLs) sets it at setup."""
    torch.manual_seed(0)
    module = REINFORCE(model=tiny_model_dir, reward=CountdownReward(), group_size=4, sampling=SAMPLING, baseline="none",
                       advantage_estimator=LeaveOneOut(clip=0.5))
    rollout = module.make_rollout(prompts(2))
    assert_close(rollout.advantages, rloo_advantages(rollout.rewards, 4).clamp(-0.5, 0.5), rtol=0, atol=0)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.0, 1.0, 1.0, 1.0, 0.0])
    # by hand: A_i = r_i - mean of the other three, then clipped to [-0.5, 0.5]: 1 - 0.5/3 -> 0.5, 0 - 1.5/3,
    # 0.5 - 1/3 = 1/6, 0 - 1.5/3; 1 - 2/3 = 1/3 (three times), 0 - 1 -> -0.5
    assert_close(LeaveOneOut(clip=0.5)(rewards, 4), torch.tensor([0.5, -0.5, 1 / 6, -0.5, 1 / 3, 1 / 3, 1 / 3, -0.5]))
    plain = REINFORCE(model=tiny_model_dir, reward=CountdownReward(), group_size=4, sampling=SAMPLING)
    GroupAdvantage("grpo", scale="none").setup(None, plain, "fit")
    assert_close(plain.advantage_estimator(rewards, 4), grpo_advantages(rewards, 4, "none"))


class CoinReward(RewardFunction):
    """Reward 1 with probability 0.2, from its own seeded generator."""

    def __init__(self):
        self.rng = random.Random(0)

    def __call__(self, completion, meta):
        return Score(float(self.rng.random() < 0.2))


def test_dynamic_sampling_resamples_flat_groups(tiny_model_dir):
    batch = prompts(8)
    flat = {}
    for dynamic in (False, True):
        torch.manual_seed(0)
        module = GRPO(model=tiny_model_dir, group_size=2, sampling=SAMPLING, reward=CoinReward(),
                      dynamic_sampling=dynamic, max_resample_rounds=10)
        rollout = module.collect(batch["prompt"], batch["meta"])
        assert len(rollout) == 16 and [m["target"] for m in rollout.metas[::2]] == [m["target"] for m in batch["meta"]]
        flat[dynamic] = zero_std_groups(rollout.scores, 2).float().mean().item()
    assert flat[False] >= 0.5 and flat[True] <= 0.25


class Broken(RewardFunction):
    def __call__(self, completion, meta):
        raise KeyError("target")


def test_a_failing_reward_names_the_sample(tiny_model_dir):
    module = RLOO(model=tiny_model_dir, group_size=2, sampling=SAMPLING, reward=Broken())
    with pytest.raises(RuntimeError, match="Broken failed on sample 0"):
        module.make_rollout(prompts(2))


@pytest.mark.parametrize("cls, kwargs, match", [
    (RLOO, {"group_size": 1}, "group_size"),
    (GRPO, {"group_size": 1}, "group_size"),
    (GRPO, {"num_iterations": 0}, "num_iterations"),
    (GRPO, {"mini_batches": 0}, "mini_batches"),
    (REINFORCE, {"baseline_decay": 1.5}, "baseline_decay"),
    (REINFORCE, {"kl_coef": -1.0}, "kl_coef"),
    (REINFORCE, {"micro_batch_size": 0}, "micro_batch_size"),
])
def test_impossible_settings_name_the_setting(tiny_model_dir, cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(model=tiny_model_dir, reward=CountdownReward(), **kwargs)


def test_resumable_batches_continue_where_they_stopped(monkeypatch):
    rows = [{"prompt": str(i), "meta": {}} for i in range(20)]
    loader = ResumableBatches(rows, batch_size=4, seed=3)
    epoch0 = [b["prompt"] for b in loader]
    epoch1 = [b["prompt"] for b in loader]
    assert len(epoch0) == 5 and sorted(sum(epoch0, [])) == sorted(r["prompt"] for r in rows)
    assert epoch0 != epoch1                                             # a fresh order each epoch
    fresh = ResumableBatches(rows, batch_size=4, seed=3)
    it = iter(fresh)
    first_two = [next(it)["prompt"] for _ in range(2)]
    resumed = ResumableBatches(rows, batch_size=4, seed=3)
    resumed.load_state_dict(fresh.state_dict())
    assert first_two + [b["prompt"] for b in resumed] == epoch0       # no batch lost, none repeated
    shards = []
    for rank in (0, 1):                                                 # two ranks split each epoch's batches
        monkeypatch.setattr(ResumableBatches, "_rank_and_world", staticmethod(lambda rank=rank: (rank, 2)))
        shards.append([b["prompt"] for b in ResumableBatches(rows, batch_size=4, seed=3)])
    assert shards[0] == epoch0[0:4:2] and shards[1] == epoch0[1:4:2]


def test_an_epoch_taken_without_exhausting_its_iterator_is_followed_by_the_next():
    """Lightning takes exactly len() batches and never asks past the end: the next iter() must start the
    next epoch (not an empty one, which would skip an epoch's batches)."""
    rows = [{"prompt": str(i), "meta": {}} for i in range(8)]
    consumed, loader = [], ResumableBatches(rows, batch_size=4, seed=3)
    for _ in range(3):
        it = iter(loader)
        consumed.append([next(it)["prompt"] for _ in range(len(loader))])
    assert loader.epoch == 2
    reference = ResumableBatches(rows, batch_size=4, seed=3)
    assert consumed == [[b["prompt"] for b in reference] for _ in range(3)]


class DigitShare(RewardFunction):
    """Share of digits in the text: varies from sample to sample even for an untrained model, so the
    gradient depends on exactly what was sampled."""

    def __call__(self, completion, meta):
        return Score(sum(c.isdigit() for c in completion) / max(1, len(completion)))


def test_resuming_mid_run_reproduces_the_uninterrupted_run(tiny_model_dir, tmp_path):
    """4 steps straight, or 2 steps, a checkpoint, a new process state, and 2 more: the same weights."""
    def run(steps, ckpt_path=None, every=None):
        torch.manual_seed(0)
        module = RLOO(model=tiny_model_dir, group_size=2, sampling=SAMPLING, val_sampling=VAL, reward=DigitShare(),
                      optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.0))
        callbacks = [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=every, save_last=True)] if every else []
        torch.manual_seed(123 if ckpt_path else 0)                     # the resumed process starts elsewhere
        fit(module, steps, tmp_path, callbacks=callbacks, ckpt_path=ckpt_path, limit_val_batches=0)
        return module

    straight = run(4)
    run(2, every=2)
    resumed = run(4, ckpt_path=str(tmp_path / "last.ckpt"))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(straight.state_dict()["policy.model.lm_head.weight"],
                           RLOO(model=tiny_model_dir, reward=CountdownReward()).state_dict()["policy.model.lm_head.weight"])


@pytest.mark.parametrize("cls, kwargs", [(GRPO, {"kl_coef": 0.1, "num_iterations": 2}), (PPO, {})],
                         ids=["GRPO", "PPO"])
def test_the_shared_prompt_forward_gives_the_same_rollout_and_gradient(tiny_model_dir, cls, kwargs):
    """Old and reference log-probs, values and the micro-batch gradient (KL, clip; PPO's value head on the
    hidden states) with ``shared_prompt_forward`` are the one-forward-per-row ones, float32 rounding apart.

    Tolerance: the two paths sum the same terms in other orders (attention over a cache vs one sequence, other
    matrix shapes). A float32 sum of n terms in any order is within (n - 1) u sum|terms| of the exact one
    (u = 2^-24), and a gradient entry sums per-token terms no larger than the model's largest gradient entry,
    so entries agree to n u max|grad| with n the batch's tokens (about 1.4e-5 of the largest entry here; seen:
    up to 1e-6 across ATEN_CPU_CAPABILITY default/avx2/avx512). The reward varies between samples so that the
    gradient is not zero (Countdown's scores all 0 on the tiny model left nothing to compare)."""
    rows, runs = prompts(2), {}
    for shared in (False, True):
        torch.manual_seed(0)
        module = cls(model=tiny_model_dir, reward=DigitShare(), group_size=4, sampling=SAMPLING,
                     shared_prompt_forward=shared, **kwargs)
        rollout = module.make_rollout(rows)
        loss, _ = module.micro_loss(rollout, module.normalisers(rollout))
        fields = [f for f in (rollout.old_logps, rollout.ref_logps, rollout.values) if f is not None]
        tokens = int(rollout.prompt_mask.sum() + rollout.completion_mask.sum())
        runs[shared] = (fields, grads(module, loss))
    (fields, full), (shared_fields, shared) = runs[False], runs[True]
    assert len(fields) == 2
    for a, b in zip(fields, shared_fields):
        assert_close(b, a, rtol=1e-5, atol=1e-5)
    scale = max(g.abs().max().item() for g in full)
    assert scale > 1e-3                                                 # a gradient worth comparing
    for a, b in zip(full, shared):
        assert_close(b, a, rtol=0, atol=tokens * 2**-24 * scale)


@needs_bf16_attention
def test_training_bfloat16_weights_in_place_is_warned_about(tiny_model_dir):
    """AdamW on bfloat16 weights loses updates below their rounding step: the run says so and what to do."""
    torch.manual_seed(0)
    module = RLOO(model=tiny_model_dir, reward=CountdownReward(), group_size=2, sampling=SAMPLING, dtype="bfloat16")
    with pytest.warns(UserWarning, match=r"training torch.bfloat16 weights in place.*dtype: float32"):
        fit(module, 1, limit_val_batches=0)
