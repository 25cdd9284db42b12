"""The documentation's examples as written there: the cases of docs/writing-an-algorithm.md (a new advantage, a new
per-token loss as a value with its YAML line, a per-token loss that reads more of the forward than log-probs, a
sequence-level loss), and the environment and the tool of docs/multi-turn.md. Each trains or runs on the tiny
model."""

import json
import re
import sys
import types
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Trainer

from lit_rl import GRPO, CountdownData, CountdownReward, MultiTurn, Sampling, Tools
from lit_rl.cli import LitRLCLI

from conftest import fit

DOCS = Path(__file__).parents[1] / "docs"


def examples(page: str = "writing-an-algorithm.md") -> dict[str, object]:
    """Run each ```python block of the documentation page ``page``; what the blocks define, by name."""
    path = DOCS / page
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", path.read_text(), re.S):
        exec(compile(block, str(path), "exec"), namespace)
    return namespace


def train(module_class, steps: int = 2, **kwargs) -> Trainer:
    torch.manual_seed(0)
    module = module_class(model=kwargs.pop("model"), reward=CountdownReward(), group_size=2,
                          sampling=Sampling(temperature=1.0, max_new_tokens=8), **kwargs)
    return fit(module, CountdownData(batch_size=2, train_size=16, val_size=4), steps)


def test_a_new_advantage(tiny_model_dir):
    trainer = train(examples()["CenteredReturn"], model=tiny_model_dir)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])


def test_a_new_loss_value_and_its_yaml_line_train_grpo(tiny_model_dir, tmp_path, monkeypatch):
    """The page's loss class, as ``mypkg.losses`` would hold it, chosen by the page's YAML line: the CLI builds
    GRPO with it, and it trains GRPO two steps of two passes each (so its ratio moves off 1)."""
    section = (DOCS / "writing-an-algorithm.md").read_text()
    (line,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    mypkg, losses = types.ModuleType("mypkg"), types.ModuleType("mypkg.losses")
    losses.CISPO = mypkg.losses = examples()["CISPO"]
    monkeypatch.setitem(sys.modules, "mypkg", mypkg)
    monkeypatch.setitem(sys.modules, "mypkg.losses", losses)
    loss = yaml.safe_load(line)["loss"]
    cli = LitRLCLI(run=False, args=["--model", "lit_rl.GRPO", "--model.init_args.model", tiny_model_dir,
                                    "--model.init_args.loss", json.dumps(loss), "--data", "lit_rl.CountdownData",
                                    "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)])
    assert cli.model.loss == losses.CISPO(**loss["init_args"])
    trainer = train(GRPO, steps=4, model=tiny_model_dir, loss=cli.model.loss, num_iterations=2)
    assert trainer.global_step == 4 and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "train/clip_frac" in trainer.callback_metrics


def test_a_new_per_token_loss_with_an_entropy_bonus(tiny_model_dir):
    trainer = train(examples()["ClippedWithEntropy"], steps=4, model=tiny_model_dir, num_iterations=2)
    assert trainer.global_step == 4 and "train/clip_frac" in trainer.callback_metrics


def test_a_sequence_level_loss(tiny_model_dir):
    trainer = train(examples()["SequenceReinforce"], model=tiny_model_dir)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])


def test_the_readme_environment_trains_a_model(tiny_model_dir):
    environment = examples("multi-turn.md")["GuessTheTarget"]()
    module = GRPO(model=tiny_model_dir, group_size=2, sampling=Sampling(temperature=1.0, max_new_tokens=8),
                  collector=MultiTurn(environment, max_turns=3))
    torch.manual_seed(0)
    trainer = fit(module, CountdownData(batch_size=2, train_size=16, val_size=4), 2)
    assert trainer.global_step == 2 and trainer.callback_metrics["rollout/turns_mean"] > 1


def test_the_readme_tool_is_one_function():
    tools = Tools([examples("multi-turn.md")["word_length"]])
    assert tools.tools()[0]["function"]["name"] == "word_length"
    step = tools.step('<tool_call>{"name": "word_length", "arguments": {"word": "agent"}}</tool_call>')
    assert step.observation == [{"role": "tool", "name": "word_length", "content": "5"}]
