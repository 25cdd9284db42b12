"""A user's own task end to end: the generic path (PromptData + FunctionReward) equals the built-in one, a
GSM8K-style chat task trains offline, and the completion log resumes without duplicates."""

import json

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from lit_rl import (
    GRPO, RLOO, CompletionLog, CountdownData, CountdownReward, FormatReward, FunctionReward, MathReward, PromptData,
    Rewards, Sampling,
)
from lit_rl.callbacks.completion_log import cut
from lit_rl.generate import generate
from lit_rl.callbacks import RolloutCallback
from lit_rl.tiny import CHAT_ALPHABET, CHAT_TEMPLATE, CHAT_WORDS, build_tiny_model
from lit_rl.timing import is_wall_clock

from conftest import fit

SAMPLING = Sampling(temperature=1.0, max_new_tokens=16)


class Record(RolloutCallback):
    """Every rollout's tokens and scores, and the metrics logged at every step."""

    def __init__(self) -> None:
        self.rollouts, self.metrics = [], []

    def on_rollout_end(self, trainer, pl_module, rollout) -> None:
        self.rollouts.append({k: getattr(rollout, k).clone() for k in ("completion_ids", "completion_mask", "scores",
                                                                       "correct", "advantages")})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items() if not is_wall_clock(k)})


def test_the_generic_path_equals_the_builtin_one():
    """RLOO on the shipped prompt file through PromptData + FunctionReward samples the same completions, scores
    them the same and logs the same metrics, step for step, as through CountdownData + CountdownReward."""
    runs = {}
    for name, data, reward in [
        ("builtin", CountdownData(batch_size=4, train_size=4000, val_size=8), CountdownReward()),
        ("generic", PromptData("builtin:countdown-prompts.jsonl", columns=["numbers", "target"], batch_size=4),
         FunctionReward("lit_rl.tasks.countdown:countdown")),
    ]:
        seed_everything(0)
        module = RLOO(model="builtin:countdown-sft", group_size=2, sampling=SAMPLING, reward=reward,
                      optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
        runs[name] = Record()
        fit(module, data, 3, [runs[name]])
    builtin, generic = runs["builtin"], runs["generic"]
    assert len(builtin.rollouts) == len(generic.rollouts) == 3
    assert any(r["scores"].sum() > 0 for r in builtin.rollouts)               # something was scored
    for a, b in zip(builtin.rollouts, generic.rollouts):
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, equal_nan=True)
    assert builtin.metrics == generic.metrics and "rollout/accuracy" in generic.metrics[0]


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory) -> str:
    """A tiny chat model: printable characters, role markers and <think>/<answer> as tokens, a chat template."""
    return str(build_tiny_model(tmp_path_factory.mktemp("chat"), hidden_size=64, num_layers=2, max_positions=256,
                                alphabet=CHAT_ALPHABET, words=CHAT_WORDS, chat_template=CHAT_TEMPLATE))


SYSTEM = "Think in <think></think>, answer in <answer></answer>."


def test_a_gsm8k_style_chat_task_trains_offline(chat_model_dir, tmp_path):
    """Shipped GSM8K-format rows, the model's chat template with a system prompt, a stop string, MathReward +
    FormatReward: two GRPO steps, each component logged, the samples written to completions.jsonl."""
    data = PromptData("builtin:gsm8k-sample.jsonl", prompt="question", columns=["answer"], batch_size=2,
                      val_fraction=0.25, filter_long=True)
    seed_everything(0)
    module = GRPO(model=chat_model_dir, group_size=2, system_prompt=SYSTEM,
                  sampling=Sampling(temperature=1.0, max_new_tokens=24, stop=["</answer>"]),
                  val_sampling=Sampling(temperature=0.0, max_new_tokens=24, stop=["</answer>"]),
                  reward=Rewards([MathReward(), FormatReward()], weights=[1.0, 0.1]))
    rendered = module.sampler.render("How many?")
    assert rendered == f"<|system|>{SYSTEM}\n<|user|>How many?\n<|assistant|>"
    record = Record()
    fit(module, data, 2, [record, CompletionLog(per_step=3)], logger=CSVLogger(tmp_path, name="", version=""))
    metrics = record.metrics[-1]
    assert {"reward/math_mean", "reward/format_mean", "rollout/accuracy", "train/loss"} <= set(metrics)
    lines = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 0, 0, 1, 1, 1]
    questions = {r["prompt"] for r in data.train_rows}
    for line in lines:
        assert line["prompt"] in questions and set(line["components"]) == {"math", "format"}
        assert isinstance(line["advantage"], float) and line["correct"] in (True, False)
        assert "</answer>" not in line["completion"] or line["completion"].endswith("</answer>")
    validator = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    results = validator.validate(module, datamodule=data, verbose=False)[0]
    assert {"val/accuracy", "val/reward_mean"} <= set(results)


def test_generate_renders_and_stores_the_users_prompts(chat_model_dir, tmp_path):
    data = PromptData("builtin:gsm8k-sample.jsonl", prompt="question", columns=["answer"])
    out = generate(model=chat_model_dir, data=data, reward=MathReward(), output=str(tmp_path / "gsm"), group_size=2,
                   num_prompts=2, batch_size=2, system_prompt=SYSTEM, sampling=Sampling(max_new_tokens=8))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4 and rows[0]["prompt"] == data.train_rows[0]["prompt"] and "answer" in rows[0]["meta"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    assert tokenizer.decode(rows[0]["prompt_ids"]).startswith(f"<|system|>{SYSTEM}")
    assert all(r["correct"] in (True, False) for r in rows)


@pytest.mark.parametrize("source", ["countdown", "prompt_file"])
def test_the_completion_log_resumes_without_duplicates(tiny_model_dir, tmp_path, source):
    """4 steps straight vs 2 steps + resume from the step-2 checkpoint in the same run directory: the log holds
    each step once, and the resumed steps' lines equal the uninterrupted run's (exact resume, through either
    DataModule: the prompts, samples and rewards after the resume are the uninterrupted run's)."""
    def module():
        seed_everything(0)
        reward = CountdownReward() if source == "countdown" else FunctionReward("lit_rl.tasks.countdown:countdown")
        return RLOO(model=tiny_model_dir, group_size=2, sampling=SAMPLING, reward=reward)

    def data():
        if source == "countdown":
            return CountdownData(batch_size=2, train_size=64, val_size=4)
        return PromptData("builtin:countdown-prompts.jsonl", batch_size=2)

    def read(directory):
        return [json.loads(line) for line in (directory / "completions.jsonl").read_text().splitlines()]

    straight = tmp_path / "straight"
    fit(module(), data(), 4, [CompletionLog(per_step=2)], logger=CSVLogger(straight, name="", version=""))
    resumed = tmp_path / "resumed"
    checkpoints = ModelCheckpoint(dirpath=resumed / "ckpt", every_n_train_steps=2, save_top_k=-1)
    fit(module(), data(), 4, [CompletionLog(per_step=2), checkpoints], logger=CSVLogger(resumed, name="", version=""))
    first = read(resumed)
    fit(module(), data(), 4, [CompletionLog(per_step=2), ModelCheckpoint(dirpath=resumed / "ckpt2")],
        logger=CSVLogger(resumed, name="", version=""), ckpt_path=str(resumed / "ckpt" / "epoch=0-step=2.ckpt"))
    lines = read(resumed)
    assert [line["step"] for line in lines] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert lines == read(straight) == first


def test_the_completion_log_survives_a_torn_line_and_follows_a_resume_into_a_new_directory(tiny_model_dir, tmp_path):
    """A kill during an append leaves a torn last line: the resume drops it instead of failing to parse it. A
    resume into another run directory starts its log with the checkpoint run's lines before the checkpoint,
    as ``metrics.csv`` does; an unreadable line elsewhere is named by file and line."""
    def module():
        seed_everything(0)
        return RLOO(model=tiny_model_dir, group_size=2, sampling=SAMPLING, reward=CountdownReward())

    def data():
        return CountdownData(batch_size=2, train_size=64, val_size=4)

    def read(directory):
        return [json.loads(line) for line in (directory / "completions.jsonl").read_text().splitlines()]

    first, second = tmp_path / "first", tmp_path / "second"
    checkpoints = ModelCheckpoint(dirpath=first / "ckpt", every_n_train_steps=2, save_top_k=-1)
    fit(module(), data(), 3, [CompletionLog(per_step=2), checkpoints], logger=CSVLogger(first, name="", version=""))
    log = first / "completions.jsonl"
    whole = log.read_text()
    log.write_text(whole + whole.splitlines(keepends=True)[-1][:25])          # a torn fourth step
    ckpt = str(first / "ckpt" / "epoch=0-step=2.ckpt")
    fit(module(), data(), 4, [CompletionLog(per_step=2)], logger=CSVLogger(second, name="", version=""), ckpt_path=ckpt)
    assert [line["step"] for line in read(second)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert read(second)[:4] == [json.loads(line) for line in whole.splitlines()[:4]]
    lines = whole.splitlines(keepends=True)
    log.write_text("".join(lines[:2]) + "{not json\n" + "".join(lines[2:]))
    with pytest.raises(ValueError, match=rf"{log}:3: not a completion log line"):
        fit(module(), data(), 4, [CompletionLog(per_step=2)], logger=CSVLogger(first, name="", version=""),
            ckpt_path=ckpt)


def test_the_completion_log_cuts_long_texts():
    long = "x" * 50 + "tail"
    assert cut(long, 10) == "[... 44 characters cut]" + long[-10:]
    assert cut("short", 10) == "short" and cut(None, 10) is None
    assert cut([{"role": "user", "content": long}], 4) == [{"role": "user", "content": "[... 50 characters cut]tail"}]


def test_a_reward_without_correctness_reports_no_accuracy(tiny_model_dir, tmp_path, monkeypatch):
    """A reward function returning plain floats has no notion of correctness: no rollout/accuracy or val/accuracy
    is logged (rather than an accuracy of 0), and the reward means are."""
    (tmp_path / "plain_rewards.py").write_text("def digits(prompts, completions, **columns):\n"
                                               "    return [sum(ch.isdigit() for ch in c) / 8 for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = PromptData("builtin:countdown-prompts-val.jsonl", batch_size=2, val_fraction=0.01)
    seed_everything(0)
    module = RLOO(model=tiny_model_dir, group_size=2, sampling=SAMPLING, reward=FunctionReward("plain_rewards:digits"),
                  val_sampling=Sampling(temperature=0.0, max_new_tokens=8))
    record = Record()
    fit(module, data, 1, [record])
    assert "rollout/reward_mean" in record.metrics[0] and "rollout/accuracy" not in record.metrics[0]
    results = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(module, datamodule=data,
                                                                                          verbose=False)[0]
    assert "val/reward_mean" in results and "val/accuracy" not in results
