"""Bradley-Terry reward-model training: golden numbers for the loss, the pairs a scored group gives, and a tiny
reward model that learns held-out pairs (text and conversational) and loads back as a RewardModel."""

import json
import math

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import CSVLogger

from lit_rl import OfflineData, RewardModel, RewardModelTraining
from lit_rl.objectives import bradley_terry_loss, pairwise_accuracy, preference_pairs
from lit_rl.tiny import CHAT_ALPHABET, CHAT_TEMPLATE, CHAT_WORDS, build_tiny_model


def test_bradley_terry_loss_golden():
    """r_c - r_r = 2, 0, -2: -log sigmoid(d) = log(1 + e^-d) = log(1 + e^-2) = 0.126928, log 2 = 0.693147,
    log(1 + e^2) = 2.126928. A margin of 1 on the first: log(1 + e^-1) = 0.313262. Centring with coef 0.1 adds
    0.1 * (r_c + r_r)^2 = 0.1 * 4 = 0.4, 0.1 * 0 = 0, 0.1 * 16 = 1.6."""
    chosen, rejected = torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 3.0])
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected), torch.tensor([0.126928, 0.693147, 2.126928]),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected, torch.tensor([1.0, 0.0, 0.0]))[0],
                               torch.tensor(0.313262), rtol=0, atol=1e-6)
    torch.testing.assert_close(bradley_terry_loss(chosen, rejected, 0.0, center_coef=0.1),
                               torch.tensor([0.526928, 0.693147, 3.726928]), rtol=0, atol=1e-6)
    assert math.isfinite(bradley_terry_loss(torch.tensor([-200.0]), torch.tensor([200.0])).item())
    assert pairwise_accuracy(chosen, rejected).item() == 0.5             # right, tie (half), wrong


def test_preference_pairs_of_a_scored_group():
    """Rewards 1, 0.1, 1, 0 on texts a, b, a, c: every ordered pair once per distinct pair of texts."""
    texts, rewards = ["a", "b", "a", "c"], [1.0, 0.1, 1.0, 0.0]
    assert preference_pairs(texts, rewards) == [(0, 1), (0, 3), (1, 3)]          # (2, 1), (2, 3) repeat texts
    assert preference_pairs(texts, rewards, min_gap=0.5) == [(0, 1), (0, 3)]     # not 0.1 against 0
    assert preference_pairs(texts, rewards, "best_worst") == [(0, 3)]
    assert preference_pairs(["a", "a"], [1.0, 0.0]) == []                         # the same text is no preference
    assert preference_pairs(texts, [0.5] * 4) == []
    with pytest.raises(ValueError, match="unknown pair mode"):
        preference_pairs(texts, rewards, "best")


def pair_rows(n: int, conversational: bool) -> list[dict]:
    """A preference a tiny model can learn: the sum is chosen over the difference."""
    rows = []
    for i in range(n):
        a, b = i % 9 + 1, i % 7 + 2
        prompt = f"Using the numbers [{a}, {b}], create an equation that equals {a + b}.\n"
        chosen, rejected = f"<answer>{a} + {b}</answer>", f"<answer>{a} - {b}</answer>"
        if conversational:
            rows.append({"prompt": [{"role": "user", "content": prompt}],
                         "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


@pytest.mark.parametrize("conversational", [False, True])
def test_a_reward_model_learns_held_out_pairs_and_loads_as_a_reward(tmp_path, conversational):
    kwargs = {"alphabet": CHAT_ALPHABET, "words": CHAT_WORDS, "chat_template": CHAT_TEMPLATE} if conversational else {}
    base = build_tiny_model(tmp_path / "base", hidden_size=64, num_layers=2, max_positions=128, **kwargs)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in pair_rows(64, conversational)))
    seed_everything(0)
    module = RewardModelTraining(model=str(base), center_coef=0.01,
                                 optimizer=lambda p: torch.optim.AdamW(p, lr=3e-3))
    data = OfflineData(str(path), batch_size=8, val_fraction=0.25)
    trainer = Trainer(accelerator="cpu", max_steps=30, logger=CSVLogger(tmp_path, name="", version=""),
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, val_check_interval=30, check_val_every_n_epoch=None)
    before = trainer.validate(module, datamodule=data, verbose=False)[0]
    trainer.fit(module, datamodule=data)
    after = trainer.callback_metrics
    assert len(data.val_groups) == 16 and len(data.groups) == 48
    assert after["val/rm_accuracy"] >= 0.9 and after["val/loss"] < before["val/loss"] - 0.1
    assert after["val/rm_margin"] > 0 and {"train/loss", "train/rm_accuracy", "val/loss"} <= set(after)
    # Exported with save_pretrained: RewardModel loads it and scores as the trained module does.
    rm = RewardModel(str(tmp_path / "hf_model"))
    group = data.val_groups[0]
    scores = [s.reward for s in rm.score([group["prompt"]] * 2, group["completions"], {})]
    module.eval()
    with torch.no_grad():
        expected = module.scores([group["prompt"]] * 2, group["completions"])
    torch.testing.assert_close(torch.tensor(scores), expected, rtol=1e-5, atol=1e-5)
    assert scores[0] > scores[1]
