"""Tools through a hub-style chat template, offline: a tiny model with a Qwen2.5-style template that renders tool
schemas and tool results, the shipped calculator tool, and the example config
``cli_configs/examples/qwen2.5-0.5b-instruct-gsm8k-tools.yaml`` run with the tiny model in place of the hub's."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer, GenerationConfig

from chat_templates import QWEN_STYLE_TOOLS, QWEN_STYLE_WORDS
from conftest import ROOT
from lit_rl import HFEngine, MultiTurn, Policy, Sampling, Tools
from lit_rl.collect import Sampler
from lit_rl.tasks.calculator import calculator
from lit_rl.tiny import CHAT_ALPHABET, build_tiny_model

CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6 * 7"}}\n</tool_call>'


@pytest.fixture(scope="module")
def qwen_style_dir(tmp_path_factory) -> str:
    """A tiny model whose template is Qwen2.5's with tools and whose turns end with ``<|im_end|>``, as a hub
    Instruct model's generation config says."""
    out = build_tiny_model(tmp_path_factory.mktemp("qwen_style"), hidden_size=64, num_layers=2, max_positions=2048,
                           alphabet=CHAT_ALPHABET, words=QWEN_STYLE_WORDS, chat_template=QWEN_STYLE_TOOLS)
    tokenizer = AutoTokenizer.from_pretrained(out)
    GenerationConfig(eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")],
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(out)
    return str(out)


class CallsOnce(Tools):
    """The model's first turn is taken as one calculator call (a tiny random model writes none), then as written."""

    def step(self, completion):
        return super().step(CALL if self.calls == 0 else completion)


def test_a_tool_result_is_rendered_by_the_template_and_never_trained(qwen_style_dir):
    torch.manual_seed(0)
    policy = Policy.load(qwen_style_dir)
    engine = HFEngine()
    engine.bind(policy.model, policy.tokenizer)
    tools = CallsOnce(["lit_rl.tasks.calculator:calculator"])
    rollout = MultiTurn(tools, max_turns=2).collect(Sampler(policy, engine), ["What is 6 times 7?"], [{}],
                                                    Sampling(temperature=1.0, max_new_tokens=8), n=2)
    prompt = policy.tokenizer.decode(rollout.prompt_ids[0][rollout.prompt_mask[0].bool()])
    assert '"name": "calculator"' in prompt and "<tools>" in prompt     # the schema, rendered by the template
    for row in range(2):
        assert [m["role"] for m in rollout.turns[row]] == ["assistant", "tool", "assistant"]
        assert rollout.turns[row][1] == {"role": "tool", "name": "calculator", "content": "42"}
        length = int(rollout.completion_mask[row].sum())
        ids, trained = rollout.completion_ids[row, :length].tolist(), rollout.loss_mask[row, :length].tolist()
        start = trained.index(0)                                        # the model's first turn ends here
        end = trained.index(1, start)
        closed = ids[start - 1] in (policy.tokenizer.eos_token_id, policy.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        suffix = ("" if closed else "<|im_end|>") + ("\n<|im_start|>user\n<tool_response>\n42\n</tool_response>"
                                                     "<|im_end|>\n<|im_start|>assistant\n")
        assert policy.tokenizer.decode(ids[start:end]) == suffix


def test_the_shipped_calculator_is_a_tool_and_never_executes_text():
    assert calculator("(48 + 24) / 3") == "24" and calculator("2 ** 10") == "1024"
    assert calculator('__import__("os").system("true")').startswith("error: only numbers")
    assert calculator("9 ** 9 ** 9").startswith("error:") and calculator("1 / 0") == "error: division by zero"


def test_the_tools_example_config_trains_offline_on_a_tiny_model(qwen_style_dir, tmp_path):
    """The hub example as shipped, with the tiny Qwen-style model and the shipped GSM8K sample in place of the
    hub's model and dataset, on the CPU for two steps."""
    config = ROOT / "cli_configs" / "examples" / "qwen2.5-0.5b-instruct-gsm8k-tools.yaml"
    args = ["fit", "--config", str(config), "--model.init_args.model", qwen_style_dir,
            "--trainer.accelerator", "cpu", "--trainer.precision", "32-true", "--trainer.max_steps", "2",
            "--trainer.limit_val_batches", "0", "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--model.init_args.gradient_checkpointing", "false", "--model.init_args.group_size", "2",
            "--model.init_args.sampling.max_new_tokens", "8", "--model.init_args.val_sampling.max_new_tokens", "8",
            "--model.init_args.collector.init_args.max_tokens", "64", "--summary", "false",
            "--data.init_args.path", "builtin:gsm8k-sample.jsonl", "--data.init_args.name", "null",
            "--data.init_args.split", "train", "--data.init_args.val_split", "null",
            "--data.init_args.val_fraction", "0.25", "--data.init_args.batch_size", "2"]
    result = subprocess.run([sys.executable, "-m", "lit_rl.cli", *args], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs" / "grpo").iterdir()
    lines = [json.loads(line) for line in (run_dir / "completions.jsonl").read_text().splitlines()]
    assert lines and all(line["turns"][0]["role"] == "assistant" for line in lines)
