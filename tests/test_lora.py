"""LoRA for every algorithm: only the adapter trains, the reference is the adapter-disabled model (no copy),
and the exported ``hf_model`` (merged) and ``hf_model/adapter`` load back as the trained policy."""

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger
from torch.testing import assert_close

from lit_rl.tasks.countdown import CountdownReward
from lit_rl import GRPO, REINFORCE, RLOO, SFT, CountdownData, LoraSettings, ReMax, RewardFunction, Score
from lit_rl.export import merged_state_dict
from lit_rl.policy import Policy

from conftest import SAMPLING, VAL

LORA = LoraSettings(r=4, alpha=8)



class DigitShare(RewardFunction):
    """Share of digits in the text: varies between samples even for an untrained model."""

    def __call__(self, completion, meta):
        return Score(sum(c.isdigit() for c in completion) / max(1, len(completion)))


ALGORITHMS = [
    (SFT, {}),
    (REINFORCE, {"kl_coef": 0.05}),
    (ReMax, {"group_size": 2, "kl_coef": 0.05, "kl_in_reward": True}),
    (RLOO, {"group_size": 2, "log_kl": True}),
    (GRPO, {"group_size": 2, "num_iterations": 2}),
]


def probe(policy: Policy) -> tuple:
    return (*policy.encode_prompts(["numbers [1, 2] target 3: ", "Using the numbers [4, 5], create an equation"], 16),
            *policy.encode_completions(["<answer>1 + 2</answer>", "<answer>(4 + 5)</answer>"]))


@pytest.mark.parametrize("cls, kwargs", ALGORITHMS, ids=lambda x: getattr(x, "__name__", ""))
def test_every_algorithm_trains_a_lora_adapter_and_exports_it(tiny_model_dir, tmp_path, cls, kwargs):
    torch.manual_seed(0)
    rl = cls is not SFT
    extra = {"sampling": SAMPLING, "reward": DigitShare()} if rl else {"reward": CountdownReward()}
    module = cls(model=tiny_model_dir, lora=LORA, val_sampling=VAL,
                 optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.0), **extra, **kwargs)
    policy = module.policy
    assert policy.is_lora and policy._reference == []                    # no second copy of the model
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    dm = CountdownData(batch_size=4, val_batch_size=4, train_size=32, val_size=4, demonstrations=not rl)
    trainer = Trainer(accelerator="cpu", max_steps=2 * getattr(module, "num_iterations", 1), enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                      logger=CSVLogger(tmp_path, name="", version=""))
    trainer.fit(module, datamodule=dm)
    changed = {n for n, p in policy.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)               # only the adapter moved
    assert any("lora_B" in n for n in changed)                          # B starts at 0: moved by a gradient
    args = probe(policy)
    base = Policy.load(tiny_model_dir)
    if rl and (module.kl_coef > 0 or module.log_kl):
        assert "train/kl" in trainer.callback_metrics                   # the reference (adapter off) was used
    if rl:
        assert_close(policy.reference_logps(*args), base.logps(*args)[0].detach(), rtol=0, atol=1e-5)
    trained = policy.logps(*args)[0].detach()
    assert not torch.allclose(trained, base.logps(*args)[0].detach(), atol=1e-3)
    merged = Policy.load(str(tmp_path / "hf_model"))                     # plain transformers, no PEFT
    assert not merged.is_lora
    assert_close(merged.logps(*args)[0].detach(), trained, rtol=0, atol=1e-4)
    adapter = Policy.load(str(tmp_path / "hf_model" / "adapter"))         # base + adapter through PEFT
    assert_close(adapter.logps(*args)[0].detach(), trained, rtol=0, atol=1e-5)


def test_merged_state_dict_leaves_the_training_model_untouched(tiny_model_dir):
    torch.manual_seed(0)
    policy = Policy.load(tiny_model_dir, lora=LORA)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    before = {n: p.detach().clone() for n, p in policy.model.state_dict().items()}
    state = merged_state_dict(policy.model)
    assert set(state) == set(Policy.load(tiny_model_dir).model.state_dict())   # the base model's own names
    q = "model.layers.0.self_attn.q_proj"
    layer = policy.model.get_base_model().model.layers[0].self_attn.q_proj
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert_close(state[f"{q}.weight"], layer.base_layer.weight + (LORA.alpha / LORA.r) * b @ a)   # W + s B A
    assert all(torch.equal(before[n], p) for n, p in policy.model.state_dict().items())
