"""Learned reward models as rewards: scores equal a direct sequence-classifier forward (padding, the reward model's
own chat template, left truncation of the prompt), named errors, never in the optimizer or the checkpoint, exact
resume with running normalisation, two reward models with weights in one RL step, a gold reward logged apart."""

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lit_rl import RLOO, CountdownData, CountdownReward, RewardModel, Rewards, Sampling
from lit_rl.rewards.model import RunningMeanStd
from lit_rl.callbacks import RolloutCallback
from lit_rl.tiny import CHAT_ALPHABET, CHAT_TEMPLATE, CHAT_WORDS, build_tiny_model

SAMPLING = Sampling(temperature=1.0, max_new_tokens=12)


def reward_model_dir(tmp_path_factory, name: str, seed: int, num_labels: int = 1, chat: bool = False,
                     no_pad: bool = False) -> str:
    """A tiny causal LM turned into a sequence classifier with a fresh head, saved with save_pretrained."""
    kwargs = {"alphabet": CHAT_ALPHABET, "words": CHAT_WORDS, "chat_template": CHAT_TEMPLATE} if chat else {}
    base = build_tiny_model(tmp_path_factory.mktemp(f"{name}_lm"), hidden_size=64, num_layers=2, max_positions=128,
                            seed=seed, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=num_labels)
    torch.nn.init.normal_(model.score.weight, std=1.0)                  # scores of order 1, not 0.02
    tokenizer = AutoTokenizer.from_pretrained(base)
    if no_pad:
        tokenizer.pad_token = None
        model.config.pad_token_id = None
    out = tmp_path_factory.mktemp(name)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory) -> str:
    return reward_model_dir(tmp_path_factory, "rm", seed=1)


@pytest.fixture(scope="module")
def chat_rm_dir(tmp_path_factory) -> str:
    return reward_model_dir(tmp_path_factory, "chat_rm", seed=2, chat=True)


PROMPTS = ["Using the numbers [1, 2], create an equation that equals 3.\n",
           [{"role": "user", "content": "Using the numbers [4, 5, 6], create an equation that equals 15.\n"}],
           "Using the numbers [7, 8], create an equation that equals 1.\n"]
COMPLETIONS = ["<answer>(1 + 2)</answer>", "<answer>4 + 5 + 6</answer>", "<answer>8"]


def direct(path: str, texts: list[str], **tokenize) -> torch.Tensor:
    """The reference: HF tokenizer and AutoModelForSequenceClassification, right padding, one batch."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.truncation_side = tokenize.pop("truncation_side", "right")    # not a call argument
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    enc = tokenizer(texts, padding=True, add_special_tokens=False, padding_side="right", return_tensors="pt",
                    **tokenize)
    with torch.no_grad():
        return model(**enc).logits[:, 0]


def test_scores_equal_a_direct_forward_with_the_reward_models_own_template(chat_rm_dir):
    """The chat RM renders every prompt (text or messages) with *its* template, appends the completion and EOS;
    right-padded batches of any micro-batch size give the direct forward's numbers."""
    tokenizer = AutoTokenizer.from_pretrained(chat_rm_dir)
    texts = [f"<|user|>{p if isinstance(p, str) else p[0]['content']}\n<|assistant|>{c}{tokenizer.eos_token}"
             for p, c in zip(PROMPTS, COMPLETIONS)]
    expected = direct(chat_rm_dir, texts)
    for micro in (1, 2, 8):
        scores = RewardModel(chat_rm_dir, micro_batch_size=micro).score(PROMPTS, COMPLETIONS, {})
        torch.testing.assert_close(torch.tensor([s.reward for s in scores]), expected, rtol=1e-5, atol=1e-5)
        assert all(s.correct is None for s in scores)                   # a reward model judges no correctness
    system = RewardModel(chat_rm_dir, system_prompt="Be brief.")
    assert system.encode(PROMPTS[:1], COMPLETIONS[:1])[0] == tokenizer(
        f"<|system|>Be brief.\n{texts[0]}", add_special_tokens=False)["input_ids"]


def test_truncation_cuts_the_prompt_from_the_left_never_the_completion(rm_dir):
    tokenizer = AutoTokenizer.from_pretrained(rm_dir)                   # the plain template: text as itself
    texts = [(p if isinstance(p, str) else p[0]["content"]) + c + tokenizer.eos_token
             for p, c in zip(PROMPTS, COMPLETIONS)]
    rm = RewardModel(rm_dir, max_length=30)
    expected = direct(rm_dir, texts, truncation=True, max_length=30, truncation_side="left")
    torch.testing.assert_close(torch.tensor([s.reward for s in rm.score(PROMPTS, COMPLETIONS, {})]), expected,
                               rtol=1e-5, atol=1e-5)
    assert all(len(row) == 30 for row in rm.encode(PROMPTS, COMPLETIONS))
    whole = tokenizer(COMPLETIONS[0] + "<eos>", add_special_tokens=False)["input_ids"]     # 10 tokens
    assert rm.encode(PROMPTS[:1], COMPLETIONS[:1])[0][-len(whole):] == whole
    # "<answer>4 + 5 + 6</answer>" + EOS: <answer>, 9 characters, </answer>, <eos> = 12 tokens
    with pytest.raises(ValueError, match="completion 1 has 12 tokens, more than max_length=11"):
        RewardModel(rm_dir, max_length=11).score(PROMPTS, COMPLETIONS, {})


def test_named_errors_and_a_tokenizer_without_pad(tmp_path_factory, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        RewardModel(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="nothing built in"):
        RewardModel("builtin:no-such-rm")
    with pytest.raises(ValueError, match="has 2 labels"):
        RewardModel(reward_model_dir(tmp_path_factory, "two", seed=3, num_labels=2))
    no_pad = reward_model_dir(tmp_path_factory, "nopad", seed=4, no_pad=True)
    assert AutoTokenizer.from_pretrained(no_pad).pad_token is None
    rm = RewardModel(no_pad)                                            # pads with EOS, so appends none
    assert rm.tokenizer.pad_token == "<eos>" and rm.eos_id is None
    texts = [(p if isinstance(p, str) else p[0]["content"]) + c for p, c in zip(PROMPTS, COMPLETIONS)]
    model = AutoModelForSequenceClassification.from_pretrained(no_pad).eval()
    model.config.pad_token_id = rm.tokenizer.pad_token_id
    enc = rm.tokenizer(texts, padding=True, add_special_tokens=False, padding_side="right", return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).logits[:, 0]
    torch.testing.assert_close(torch.tensor([s.reward for s in rm.score(PROMPTS, COMPLETIONS, {})]), expected)


@pytest.mark.parametrize("setting, message", [
    ({"max_length": 0}, "max_length must be a positive number of tokens, or unset .*got 0"),
    ({"max_length": -5}, "max_length must be a positive number of tokens, or unset .*got -5"),
    ({"dtype": "float33"}, "dtype 'float33' is not a torch floating-point dtype"),
    ({"dtype": "int64"}, "dtype 'int64' is not a torch floating-point dtype"),
])
def test_bad_settings_are_named_at_construction(rm_dir, setting, message):
    with pytest.raises(ValueError, match=message):
        RewardModel(rm_dir, **setting)


def test_a_max_length_that_cannot_hold_the_longest_completion_is_refused_before_training(tiny_model_dir, rm_dir):
    """max_new_tokens 12, plus EOS, plus one prompt token: 14. Under that, and with the policy's vocabulary (token
    counts agree), the run stops at setup instead of at the first 12-token completion mid-run; inside Rewards too."""
    def run(max_length):
        seed_everything(0)
        reward = Rewards([RewardModel(rm_dir, max_length=max_length), CountdownReward()])
        module = RLOO(model=tiny_model_dir, group_size=2, sampling=SAMPLING, reward=reward,
                      val_sampling=Sampling(temperature=0.0, max_new_tokens=12))     # the longer of the two counts
        Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, limit_val_batches=0).fit(module, datamodule=CountdownData(
                    batch_size=2, train_size=8, val_size=2))
        return module

    with pytest.raises(ValueError, match=r"RewardModel max_length=13 cannot hold a completion of max_new_tokens=12 "
                                         r"tokens with its EOS and a prompt token .*set max_length >= 14"):
        run(13)
    assert run(14).global_step == 1


def test_running_mean_std_golden():
    """[1, 2, 3] then [4]: mean 10/4 = 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, population
    variance 5/4 = 1.25 (the parallel update must equal the one-pass numbers)."""
    stats = RunningMeanStd()
    stats.update([1.0, 2.0, 3.0])
    stats.update([4.0])
    assert stats.count == 4 and stats.mean == pytest.approx(2.5, abs=1e-12)
    assert stats.std ** 2 == pytest.approx(1.25, abs=1e-12)


def test_normalisation_updates_in_training_only(rm_dir):
    rm = RewardModel(rm_dir, normalize=True)
    raw = torch.tensor(rm.raw_scores(PROMPTS, COMPLETIONS), dtype=torch.float64)
    scores = torch.tensor([s.reward for s in rm.score(PROMPTS, COMPLETIONS, {})], dtype=torch.float64)
    expected = (raw - raw.mean()) / (raw.std(unbiased=False) + 1e-6)
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=1e-6)
    rm.bind("cpu", torch.float32, training=False)
    rm.score(PROMPTS[:1], COMPLETIONS[:1], {})
    assert rm.stats.count == 3                                          # validation leaves the statistics alone
    rm.bind("cpu", torch.bfloat16, training=True)
    assert rm.model.dtype == torch.bfloat16                             # follows the policy's dtype


class Record(RolloutCallback):
    def __init__(self) -> None:
        self.rollouts, self.metrics = [], []

    def on_rollout_end(self, trainer, pl_module, rollout) -> None:
        self.rollouts.append(rollout)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def fit(module, steps: int, callbacks=(), ckpt_path=None, val: bool = False) -> Trainer:
    trainer = Trainer(accelerator="cpu", max_steps=steps, logger=False, limit_val_batches=1 if val else 0,
                      enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
                      callbacks=list(callbacks), enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, val_check_interval=steps if val else None)
    trainer.fit(module, datamodule=CountdownData(batch_size=2, train_size=64, val_size=4), ckpt_path=ckpt_path)
    return trainer


def test_the_reward_model_never_enters_the_optimizer_or_the_checkpoint(tiny_model_dir, rm_dir, tmp_path):
    seed_everything(0)
    rm = RewardModel(rm_dir)
    module = RLOO(model=tiny_model_dir, group_size=2, sampling=SAMPLING, reward=rm)
    fit(module, 1, [ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    rm_params = {id(p) for p in rm.model.parameters()}
    optimized = [p for group in module.optimizers().optimizer.param_groups for p in group["params"]]
    assert optimized and not rm_params & {id(p) for p in optimized}
    assert not rm_params & {id(p) for p in module.parameters()}
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert set(checkpoint["state_dict"]) == set(module.state_dict())
    assert all(key.startswith("policy.") for key in checkpoint["state_dict"])
    assert "reward_state" not in checkpoint                              # nothing to keep without normalisation
    assert not any(p.requires_grad for p in rm.model.parameters())


def test_resume_with_reward_normalisation_is_exact(tiny_model_dir, rm_dir, tmp_path):
    """4 steps straight vs 2 steps + resume + 2: the same weights and the same normalisation statistics."""
    def module():
        seed_everything(0)
        return RLOO(model=tiny_model_dir, group_size=2, sampling=SAMPLING, reward=RewardModel(rm_dir, normalize=True),
                    optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))

    straight = module()
    fit(straight, 4)
    first = module()
    fit(first, 4, [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1)])
    checkpoint = torch.load(tmp_path / "epoch=0-step=2.ckpt", weights_only=False)
    assert checkpoint["reward_state"]["stats"]["count"] == 2 * 2 * 2    # 2 steps x 2 prompts x G = 2
    resumed = module()
    fit(resumed, 4, ckpt_path=str(tmp_path / "epoch=0-step=2.ckpt"))
    assert resumed.reward_fn.stats.state_dict() == straight.reward_fn.stats.state_dict()
    assert straight.reward_fn.stats.count == 16
    for (name, a), b in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_an_rl_step_with_two_reward_models_and_weights_and_a_gold_reward(tiny_model_dir, rm_dir, chat_rm_dir):
    """R = 1.0 * rm_a + 0.5 * rm_b (each on its own template), each component logged; the Countdown verifier as
    the gold reward is logged on rollouts and held out, and never reaches the scores the loss sees."""
    seed_everything(0)
    rm_a, rm_b = RewardModel(rm_dir, name="rm_a"), RewardModel(chat_rm_dir, name="rm_b")
    module = RLOO(model=tiny_model_dir, group_size=2, sampling=SAMPLING, reward=Rewards([rm_a, rm_b], [1.0, 0.5]),
                  gold_reward=CountdownReward())
    record = Record()
    trainer = fit(module, 1, [record], val=True)
    rollout, metrics = record.rollouts[0], record.metrics[0]
    texts = module.policy.decode(rollout.completion_ids, rollout.completion_mask)
    a = torch.tensor([s.reward for s in rm_a.score(rollout.prompts, texts, {})])
    b = torch.tensor([s.reward for s in rm_b.score(rollout.prompts, texts, {})])
    torch.testing.assert_close(rollout.scores, a + 0.5 * b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rollout.components["rm_b"], b, rtol=1e-5, atol=1e-5)
    assert metrics["reward/rm_a_mean"] == pytest.approx(float(a.mean()), abs=1e-5)
    assert {"gold/reward_mean", "gold/accuracy", "train/loss"} <= set(metrics)
    assert "rollout/accuracy" not in metrics                              # the proxy judges no correctness
    assert rollout.correct.isnan().all() and not rollout.gold_correct.isnan().any()
    assert {"val/gold_accuracy", "val/gold_reward_mean", "val/reward_mean"} <= set(trainer.callback_metrics)


def test_the_shipped_countdown_reward_model_loads():
    rm = RewardModel("builtin:countdown-rm")
    assert rm.model.config.num_labels == 1 and rm.eos_id == rm.tokenizer.eos_token_id
    prompt = "Using the numbers [3, 5, 9], create an equation that equals 17.\n"
    scores = rm.score([prompt] * 2, ["<answer>3 + 5 + 9</answer>", "<answer>3 * 5 - 9</answer>"], {})
    assert all(isinstance(s.reward, float) for s in scores)
