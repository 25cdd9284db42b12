"""Per-token losses as values (``lit_rl.losses``): each is exactly the pure function it wraps, tokens outside
``loss_mask`` change nothing, the old string settings map to the right values (and compare equal to them on a
resume), and the owners read what a loss declares it needs."""

import warnings
from dataclasses import replace

import pytest
import torch

from lit_rl import GRPO, Teacher
from lit_rl.losses import (SAPO, ClippedSurrogate, CorrectnessMSE, ImplicitRewardCE, PolicyGradient, PPOClip,
                           TokenLoss)
from lit_rl.modules.erpd_teacher import TEACHER_LOSSES
from lit_rl.modules.grpo import GRPO_LOSSES
from lit_rl.objectives import ce_loss, clipped_policy_loss, mse_loss, policy_gradient_loss, ppo_loss, sapo_loss
from lit_rl.policy import PolicyOutput
from lit_rl.resume import describe, in_current_form
from lit_rl.rollout import RolloutBatch

B, C = 4, 6


def batch_and_output(seq_advantages: bool = True, seed: int = 0) -> tuple[RolloutBatch, PolicyOutput, torch.Tensor]:
    """A multi-turn-shaped micro-batch: attention on a prefix of each row, trained tokens a part of it (an
    environment's tokens attended but not trained); random log-probs, values, returns, advantages, correctness."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([6, 5, 3, 1])
    attention = (torch.arange(C)[None] < lengths[:, None]).float()      # [B, C]
    loss_mask = attention.clone()
    loss_mask[0, 2:4] = 0                                               # an observation inside an episode
    logps = -torch.rand(B, C, generator=g) * 3
    advantages = torch.randn(B, generator=g) if seq_advantages else torch.randn(B, C, generator=g)
    batch = RolloutBatch(
        prompt_ids=torch.zeros(B, 2, dtype=torch.long), prompt_mask=torch.ones(B, 2, dtype=torch.long),
        completion_ids=torch.zeros(B, C, dtype=torch.long), completion_mask=attention, loss_mask=loss_mask,
        scores=torch.rand(B, generator=g), correct=torch.tensor([1.0, 0.0, 1.0, 0.0]), metas=[{}] * B, group_size=2,
        old_logps=logps + 0.3 * torch.randn(B, C, generator=g), advantages=advantages,
        values=torch.randn(B, C, generator=g), returns=torch.randn(B, C, generator=g))
    output = PolicyOutput(logps=logps, logits=torch.randn(B, C, 5, generator=g))
    return batch, output, torch.randn(B, C, generator=g)             # the value head's values of this forward


LOSSES = [PolicyGradient(), ClippedSurrogate(), ClippedSurrogate(0.1, 0.28, dual_clip=3.0), PPOClip(),
          PPOClip(0.2, 0.28, vf_coef=0.1, value_clip=None), SAPO(), SAPO(0.5, 2.0), ImplicitRewardCE(),
          ImplicitRewardCE(beta=0.05, reduce="mean"), CorrectnessMSE(), CorrectnessMSE(negative_weight=0.5)]


def wrapped(loss: TokenLoss, batch: RolloutBatch, output: PolicyOutput, values: torch.Tensor):
    """What each value computes, written with the pure functions directly."""
    logps, old, adv, mask = output.logps, batch.old_logps, batch.advantages, batch.loss_mask
    if isinstance(loss, PolicyGradient):
        return policy_gradient_loss(logps, adv), None
    if isinstance(loss, ClippedSurrogate):
        return clipped_policy_loss(logps, old, adv, loss.eps_low, loss.eps_high, loss.dual_clip)
    if isinstance(loss, PPOClip):
        return ppo_loss(logps, old, adv, values, batch.values, batch.returns, loss.eps_low, loss.eps_high,
                        loss.vf_coef, loss.value_clip)
    if isinstance(loss, SAPO):
        return sapo_loss(logps, old, adv, loss.tau_pos, loss.tau_neg), None
    if isinstance(loss, ImplicitRewardCE):
        per_seq = ce_loss(logps, old, mask, batch.correct, loss.beta, loss.reduce)
        return per_seq[:, None] * mask / mask.sum(-1, keepdim=True).clamp(min=1), None
    return mse_loss(logps, batch.correct, loss.negative_weight), None


@pytest.mark.parametrize("seq_advantages", [True, False])
@pytest.mark.parametrize("loss", LOSSES, ids=repr)
def test_each_loss_is_exactly_the_function_it_wraps(loss, seq_advantages):
    batch, output, values = batch_and_output(seq_advantages)
    got, clipped = loss(output, batch, values)
    want, want_clipped = wrapped(loss, batch, output, values)
    assert got.shape == (B, C) and torch.equal(got, want)
    assert (clipped is None) == (want_clipped is None) and (clipped is None or torch.equal(clipped, want_clipped))


@pytest.mark.parametrize("loss", LOSSES, ids=repr)
def test_tokens_outside_the_loss_mask_change_nothing(loss):
    """Anything at an untrained position (an observation, padding) leaves the loss and the clipped mask of the
    trained positions as they were, bit for bit."""
    batch, output, values = batch_and_output(seq_advantages=False)
    mask = batch.loss_mask.bool()
    off = ~mask
    noise = torch.randn(B, C) * 5

    def scramble(t):
        return torch.where(off, t + noise, t)

    moved_batch = replace(batch, old_logps=scramble(batch.old_logps), advantages=scramble(batch.advantages),
                          values=scramble(batch.values), returns=scramble(batch.returns))
    moved_output = replace(output, logps=scramble(output.logps))
    before, clipped_before = loss(output, batch, values)
    after, clipped_after = loss(moved_output, moved_batch, scramble(values))
    assert torch.equal(before[mask], after[mask])
    if clipped_before is not None:
        assert torch.equal(clipped_before[mask], clipped_after[mask])


def test_what_losses_declare_they_need():
    assert PPOClip.needs_hidden and PPOClip.needs_values and not PPOClip.needs_correct
    assert ImplicitRewardCE.needs_correct and CorrectnessMSE.needs_correct and not ImplicitRewardCE.needs_values
    assert not any(c.needs_hidden or c.needs_values or c.needs_correct
                   for c in (PolicyGradient, ClippedSurrogate, SAPO))


@pytest.mark.parametrize("make, match", [
    (lambda: ClippedSurrogate(dual_clip=0.5), "dual_clip"), (lambda: ClippedSurrogate(eps_low=1.0), "eps_low"),
    (lambda: PPOClip(vf_coef=-1.0), "vf_coef"), (lambda: PPOClip(value_clip=0.0), "value_clip"),
    (lambda: SAPO(tau_neg=0.0), "tau_neg"), (lambda: ImplicitRewardCE(beta=0.0), "beta"),
    (lambda: ImplicitRewardCE(reduce="max"), "reduce"),
    (lambda: CorrectnessMSE(negative_weight=-1.0), "negative_weight"),
])
def test_bad_loss_settings_are_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ------------------------------------------------------------------------------------------- the old strings
TEACHER_ALIASES = [
    ({"loss": "grpo"}, ClippedSurrogate(0.2, 0.28)),                   # the teacher's old eps_high default
    ({"loss": "grpo", "eps_low": 0.1, "eps_high": 0.3}, ClippedSurrogate(0.1, 0.3)),
    ({"loss": "ppo"}, PPOClip(0.2, 0.28, 0.5, 0.2)),
    ({"loss": "ppo", "vf_coef": 0.1, "value_clip": 0.5, "beta": 0.3}, PPOClip(0.2, 0.28, 0.1, 0.5)),  # beta: not PPO's
    ({"loss": "sapo", "tau_neg": 2.0}, SAPO(1.0, 2.0)),
    ({"loss": "ce"}, ImplicitRewardCE(0.01, "sum")),
    ({"loss": "ce", "beta": 0.05, "reduce": "mean"}, ImplicitRewardCE(0.05, "mean")),
    ({"loss": "mse", "negative_weight": 0.5}, CorrectnessMSE(0.5)),
    ({}, ImplicitRewardCE()),                                          # the default teacher
    ({"beta": 0.05}, ImplicitRewardCE(beta=0.05)),
]


@pytest.mark.parametrize("settings, value", TEACHER_ALIASES, ids=str)
def test_a_teachers_old_string_maps_to_its_value(settings, value):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        teacher = Teacher(epochs=2, **settings)
    assert teacher.loss == value and type(teacher.loss) is type(value)
    assert teacher == Teacher(loss=value, epochs=2)                   # the value replaced the old form entirely
    deprecated = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(deprecated) == ("loss" in settings), [str(w.message) for w in caught]
    if "loss" in settings:
        assert f"lit_rl.losses.{type(value).__name__}" in str(deprecated[0].message)


@pytest.mark.parametrize("settings, value", [
    ({}, ClippedSurrogate()), ({"eps_high": 0.28, "dual_clip": 3.0}, ClippedSurrogate(0.2, 0.28, 3.0)),
    ({"loss": "clip", "eps_low": 0.1, "tau_pos": 5.0}, ClippedSurrogate(0.1, 0.2)),
    ({"loss": "sapo", "eps_high": 0.28}, SAPO()), ({"loss": "sapo", "tau_pos": 0.5}, SAPO(0.5, 1.05)),
], ids=str)
def test_grpos_old_settings_map_to_its_value(settings, value):
    flat = {k: settings.get(k) for k in GRPO_LOSSES.flat}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert GRPO_LOSSES.resolve(settings.get("loss"), flat, "GRPO") == value


def test_an_old_string_warns_and_a_setting_beside_a_value_or_an_unknown_name_is_refused(tiny_model_dir):
    with pytest.warns(DeprecationWarning, match=r"loss='sapo'.*lit_rl\.losses\.SAPO"):
        assert GRPO(model=tiny_model_dir, loss="sapo", tau_pos=0.5).loss == SAPO(0.5, 1.05)
    with pytest.raises(ValueError, match=r"eps_high=0\.28 set beside loss=SAPO"):
        GRPO(model=tiny_model_dir, loss=SAPO(), eps_high=0.28)
    with pytest.raises(ValueError, match="unknown loss 'cispo'"):
        GRPO(model=tiny_model_dir, loss="cispo")
    with pytest.raises(ValueError, match="GRPO has no critic"):
        GRPO(model=tiny_model_dir, loss=PPOClip())
    with pytest.raises(ValueError, match=r"beta=0\.05 set beside loss=CorrectnessMSE"):
        Teacher(loss=CorrectnessMSE(), beta=0.05)
    with pytest.raises(ValueError, match="unknown loss 'dpo'"):
        Teacher(loss="dpo")


def test_a_config_written_with_the_old_strings_compares_equal_to_the_values():
    """What a resume compares: the config of a run written before losses were values (every teacher field in
    the dump, the loss a string) and today's config of the same run."""
    old = {"loss": "ppo", "epochs": 2, "kl_coef": 0.0, "beta": 0.01, "reduce": "sum", "tau_pos": 1.0,
           "tau_neg": 1.05, "eps_low": 0.2, "eps_high": 0.28, "vf_coef": 0.5, "value_clip": 0.2,
           "adaptive_lambda_alpha": None, "negative_weight": 1.0, "strategy": 1}
    new = {"loss": {"class_path": "lit_rl.losses.PPOClip",
                    "init_args": {"eps_low": 0.2, "eps_high": 0.28, "vf_coef": 0.5, "value_clip": 0.2}},
           "epochs": 2, "kl_coef": 0.0, "adaptive_lambda_alpha": None, "strategy": 1}
    erpd = lambda teacher: {"model": {"class_path": "lit_rl.ERPD", "init_args": {"teachers": [teacher]}}}  # noqa: E731
    assert in_current_form(erpd(old)) == in_current_form(erpd(new))
    assert in_current_form(erpd({**old, "vf_coef": 0.4})) != in_current_form(erpd(new))
    assert TEACHER_LOSSES.canonical(describe(Teacher(loss="ppo"))) == TEACHER_LOSSES.canonical(
        describe(Teacher(loss=PPOClip(eps_high=0.28))))
    grpo = lambda init: {"model": {"class_path": "lit_rl.GRPO", "init_args": init}}                      # noqa: E731
    old_grpo = {"loss": "clip", "eps_low": 0.2, "eps_high": 0.28, "dual_clip": None, "tau_pos": 1.0, "tau_neg": 1.05}
    value = {"loss": {"class_path": "lit_rl.losses.ClippedSurrogate", "init_args": {"eps_low": 0.2, "eps_high": 0.28,
                                                                                    "dual_clip": None}}}
    assert in_current_form(grpo(old_grpo)) == in_current_form(grpo({"eps_high": 0.28})) == in_current_form(grpo(value))
    assert in_current_form(grpo({**old_grpo, "loss": "sapo"})) != in_current_form(grpo({"eps_high": 0.28}))


def test_a_checkpoint_holding_a_loss_value_resumes_and_another_value_is_refused(tiny_model_dir, tmp_path):
    """The value is saved with the module's settings and loads with torch's safe unpickler (every TokenLoss
    subclass is registered); the same value resumes, the old string it stands for too, and another is named."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_rl import CountdownData, CountdownReward
    from lit_rl.errors import ResumeMismatch

    from conftest import SAMPLING, fit

    def grpo(**loss):
        torch.manual_seed(0)
        return GRPO(model=tiny_model_dir, reward=CountdownReward(), group_size=2, sampling=SAMPLING, **loss)

    def data():
        return CountdownData(batch_size=2, train_size=16, val_size=4)

    fit(grpo(loss=SAPO(tau_neg=2.0)), data(), 1, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    ckpt = str(tmp_path / "last.ckpt")
    assert fit(grpo(loss=SAPO(tau_neg=2.0)), data(), 2, ckpt_path=ckpt).global_step == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        assert fit(grpo(loss="sapo", tau_neg=2.0), data(), 2, ckpt_path=ckpt).global_step == 2
    with pytest.raises(ResumeMismatch, match=r"loss.*tau_neg.*2\.0.*1\.05"):
        fit(grpo(loss=SAPO()), data(), 2, ckpt_path=ckpt)
