"""PPO's separate critic (``lit_rl.critic``): its values and gradients against a hand-written per-row loop, its
reading of a reward model, its warm-up, its own clip and learning rate, LoRA, the export, and what it refuses.
Its FSDP2 run is in tests/test_distributed.py and its kill -9 resume in tests/test_kill_resume.py."""

from dataclasses import replace

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger
from torch.testing import assert_close
from transformers import AutoModelForSequenceClassification

from lit_rl import PPO, Critic, CriticSettings, LoraSettings
from lit_rl.critic import value_head_of
from lit_rl.distributed import check_clipping
from lit_rl.objectives import clipped_value_loss
from lit_rl.policy import Policy
from lit_rl.tiny import ALPHABET, build_tiny_model

from conftest import SAMPLING
from test_modules import DigitShare, fit, prompts


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory) -> str:
    """The tiny model's backbone with a random one-label score head, saved as a reward model."""
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    torch.nn.init.normal_(value_head_of(model).weight, std=0.5)
    out = tmp_path_factory.mktemp("rm")
    model.save_pretrained(out)
    Policy.load(tiny_model_dir).tokenizer.save_pretrained(out)
    return str(out)


def ppo(model_dir, critic: CriticSettings, **kwargs) -> PPO:
    torch.manual_seed(0)
    return PPO(model=model_dir, reward=DigitShare(), group_size=2, sampling=SAMPLING, critic=critic,
               aggregation="token_mean", **kwargs)


def test_values_and_the_value_loss_gradient_equal_a_per_row_loop(tiny_model_dir, reward_model_dir):
    """``V_t`` is the backbone's last hidden state at the position before completion token ``t`` through the
    head; the module's value loss and its gradient in the critic equal a loop over rows without padding:
    ``vf_coef * 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)`` summed over each row's trained
    tokens, over the batch's token count (``token_mean``).

    Tolerance: the loop runs each row alone (no padding, other matrix shapes), so float32 sums differ in order:
    values within a few ulps of their size (< 1e-5 here); gradients sum at most 64 per-token terms, each within
    rounding, so 1e-5 relative to the largest entry (seen: ~1e-7)."""
    module = ppo(tiny_model_dir, CriticSettings(model=reward_model_dir))
    rollout = module.make_rollout(prompts(2))
    mask = rollout.completion_mask.clone()
    mask[0, -3:] = 0                                                    # a shorter row: right padding
    rollout = replace(rollout, completion_mask=mask, loss_mask=mask, values=(rollout.values + 0.3) * mask,
                      returns=(rollout.returns - 0.2) * mask)            # clipped both ways
    assert rollout.prompt_mask.sum(-1).unique().numel() > 1             # prompts of different lengths: left padding
    critic, head = module.critic, value_head_of(module.critic.base)
    params = [p for p in module.critic.parameters() if p.requires_grad]

    values = critic(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
    loss = module.loss.vf_coef * clipped_value_loss(values, rollout.values, rollout.returns, module.loss.value_clip)
    loss = (loss * rollout.loss_mask).sum() / rollout.loss_mask.sum()
    got = torch.autograd.grad(loss, params)

    reference_loss = torch.zeros(())
    for i in range(len(rollout)):
        prompt = rollout.prompt_ids[i][rollout.prompt_mask[i].bool()]
        n = int(rollout.completion_mask[i].sum())
        ids = torch.cat([prompt, rollout.completion_ids[i, :n]])[None]          # [1, P_i + n]
        hidden = critic.base.base_model(input_ids=ids).last_hidden_state[0]      # [P_i + n, H]
        row = hidden[len(prompt) - 1:len(prompt) - 1 + n] @ head.weight[0]      # [n]
        assert_close(values[i, :n], row, rtol=1e-5, atol=1e-5)
        for t in range(n):
            v, old, ret = row[t], rollout.values[i, t], rollout.returns[i, t]
            clipped = old + (v - old).clamp(-module.loss.value_clip, module.loss.value_clip)
            reference_loss = reference_loss + 0.5 * torch.maximum((v - ret) ** 2, (clipped - ret) ** 2)
    reference_loss = module.loss.vf_coef * reference_loss / rollout.loss_mask.sum()
    expected = torch.autograd.grad(reference_loss, params)
    assert_close(loss, reference_loss, rtol=1e-5, atol=1e-7)
    scale = max(g.abs().max() for g in expected)
    assert scale > 1e-3
    for a, b in zip(got, expected):
        assert_close(a, b, rtol=0, atol=1e-5 * scale)


def test_a_critic_from_a_reward_model_reads_the_reward_models_score_of_each_prefix(tiny_model_dir, reward_model_dir):
    """Initialised from a reward model, ``V_t`` is the reward model's score of the prompt and the completion's
    first ``t`` tokens (its score head on the last token's state), as OpenRLHF initialises its critic; from a
    causal LM the head is new and zero, so the first advantages are the plain returns."""
    module = ppo(tiny_model_dir, CriticSettings(model=reward_model_dir))
    rollout = module.make_rollout(prompts(1))
    rm = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    prompt = rollout.prompt_ids[0][rollout.prompt_mask[0].bool()]
    for t in range(1, int(rollout.completion_mask[0].sum())):
        ids = torch.cat([prompt, rollout.completion_ids[0, :t]])[None]
        with torch.no_grad():
            score = rm(input_ids=ids).logits[0, 0]
        assert_close(rollout.values[0, t], score, rtol=1e-5, atol=1e-5)
    fresh = ppo(tiny_model_dir, CriticSettings())                       # from the policy's own checkpoint
    assert value_head_of(fresh.critic.base).weight.abs().max() == 0
    assert fresh.make_rollout(prompts(1)).values.abs().max() == 0


def test_warm_up_trains_the_critic_alone_then_both_train_each_with_its_own_clip(tiny_model_dir, tmp_path):
    """During ``warmup_steps`` the policy runs no forward and keeps its weights while the critic moves; then both
    move. The critic's gradient is clipped to its own ``max_grad_norm`` (here tiny, so every step clips), its
    learning rate is its own, and the run exports it to ``critic/``, a reward model ``transformers`` loads."""
    module = ppo(tiny_model_dir, CriticSettings(lr=5e-3, max_grad_norm=1e-3, warmup_steps=2),
                 optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    policy_start = {k: v.clone() for k, v in module.policy.state_dict().items()}
    norms, changed = [], []

    class Watch(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            norms.append(float(trainer.callback_metrics["train/critic_grad_norm"]))
            changed.append(any(not torch.equal(v, pl_module.policy.state_dict()[k]) for k, v in policy_start.items()))

    trainer = fit(module, 4, tmp_path, callbacks=[Watch()], logger=CSVLogger(tmp_path, name="", version=""))
    assert changed == [False, True]                                     # 2 optimizer steps per rollout (PPO epochs)
    assert "train/grad_norm" in trainer.callback_metrics and all(n > 1e-3 for n in norms)   # before clipping
    groups = module.optimizers().optimizer.param_groups
    assert [g["lr"] for g in groups] == [1e-3, 5e-3]
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "critic")
    for name, value in exported.state_dict().items():
        assert torch.equal(value, module.critic.model.state_dict()[name]), name


def test_a_lora_critic_trains_its_adapters_and_its_head_and_exports_merged(tiny_model_dir, reward_model_dir, tmp_path):
    """Under ``critic.lora`` the critic trains its adapters and its full value head, nothing else; ``critic/``
    holds the merged weights, whose values equal the adapted critic's."""
    module = ppo(tiny_model_dir, CriticSettings(model=reward_model_dir, lora=LoraSettings(r=4, alpha=8), lr=1e-2))
    trainable = [n for n, p in module.critic.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.endswith("score.weight") for n in trainable)
    assert any(n.endswith("score.weight") for n in trainable)
    rollout = module.make_rollout(prompts(2))
    fit(module, 2, tmp_path, logger=CSVLogger(tmp_path, name="", version=""))
    merged = Critic(AutoModelForSequenceClassification.from_pretrained(tmp_path / "critic"))
    fields = (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)
    trained = module.critic.values(*fields)
    assert not torch.equal(trained * rollout.loss_mask, rollout.values)          # training moved the critic
    assert_close(merged.values(*fields), trained, rtol=1e-5, atol=1e-5)
    assert value_head_of(merged.base).weight.abs().max() > 0


def test_micro_batches_give_the_full_batch_gradient_in_both_networks(tiny_model_dir):
    """1x4 and 4x1: policy and critic gradients accumulate to the full batch's (float32 sums in other orders)."""
    module = ppo(tiny_model_dir, CriticSettings())
    torch.nn.init.normal_(value_head_of(module.critic.base).weight, std=0.3)
    rollout = module.make_rollout(prompts(2))
    rollout = replace(rollout, old_logps=rollout.old_logps - 0.1)       # some tokens clip
    policy, critic = ([p for p in m.parameters() if p.requires_grad] for m in (module.policy, module.critic))
    normalisers = module.normalisers(rollout)
    full = torch.autograd.grad(module.micro_loss(rollout, normalisers)[0], policy + critic, allow_unused=True)
    parts = [torch.autograd.grad(module.micro_loss(m, normalisers)[0], policy + critic, allow_unused=True)
             for m in rollout.split(1)]
    for network in (full[:len(policy)], full[len(policy):]):           # both networks have a gradient
        assert sum(f.abs().sum() for f in network if f is not None) > 0
    for i, f in enumerate(full):
        if f is not None:
            assert_close(sum(p[i] for p in parts), f, rtol=1e-4, atol=1e-6)


def test_bad_critic_settings_are_named(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="critic.lr"):
        CriticSettings(lr=-1.0)
    with pytest.raises(ValueError, match="critic.warmup_steps"):
        CriticSettings(warmup_steps=-1)
    other = build_tiny_model(tmp_path / "other", hidden_size=64, num_layers=1, alphabet=ALPHABET[::-1])  # other ids
    with pytest.raises(ValueError, match="differs from the policy's"):
        ppo(tiny_model_dir, CriticSettings(model=str(other)))
    from lightning.pytorch.strategies import DeepSpeedStrategy

    with pytest.raises(ValueError, match="critic.max_grad_norm: 1.0 would not clip under DeepSpeed"):
        check_clipping(DeepSpeedStrategy.__new__(DeepSpeedStrategy), 1.0, "critic.max_grad_norm")


def test_each_network_is_clipped_to_its_own_norm(tiny_model_dir):
    """The policy's gradient to ``max_grad_norm`` and the critic's to ``critic.max_grad_norm``, each over its own
    parameters: clipping one leaves the other's as it was. The policy's norm before clipping is returned."""
    module = ppo(tiny_model_dir, CriticSettings(max_grad_norm=1e-4), max_grad_norm=1e-2)
    torch.nn.init.normal_(value_head_of(module.critic.base).weight, std=0.3)
    rollout = module.make_rollout(prompts(2))
    module.micro_loss(rollout, module.normalisers(rollout))[0].backward()

    def norm(network):
        return torch.nn.utils.get_total_norm([p.grad for p in network.parameters() if p.grad is not None])

    policy_before, critic_before = norm(module.policy), norm(module.critic)
    assert policy_before > 1e-2 and critic_before > 1e-4                # both will clip
    assert_close(module.clip(None), policy_before)
    assert_close(norm(module.policy), torch.tensor(1e-2), rtol=1e-4, atol=0)
    assert_close(norm(module.critic), torch.tensor(1e-4), rtol=1e-4, atol=0)
