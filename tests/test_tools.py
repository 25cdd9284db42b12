"""Tools: schemas from typed, documented functions; the Hermes/Qwen <tool_call> parser; each bad call as an
error the model reads; the episode's call budget; tools and tool results through a Qwen-style chat template."""

import copy
import datetime
import json
import time

import pytest
from transformers.utils import get_json_schema

from lit_rl import EnvStep, Tools
from lit_rl.tiny import CHAT_ALPHABET
from lit_rl.tokenizer import char_tokenizer
from lit_rl.tools import ToolCall, as_text, parse_tool_calls
from tests import tool_examples
from tests.chat_templates import QWEN_STYLE_TOOLS, QWEN_STYLE_WORDS

ADD = "tests.tool_examples:add"


def call(name: str, **arguments) -> str:
    """A completion's <tool_call> block, as Qwen2.5 writes one."""
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def contents(step: EnvStep) -> list[str]:
    assert not step.done and all(m["role"] == "tool" for m in step.observation)
    return [m["content"] for m in step.observation]


def test_schemas_are_get_json_schemas_for_typed_documented_functions():
    tools = Tools([ADD, tool_examples.search])
    assert tools.tools() == [get_json_schema(tool_examples.add), get_json_schema(tool_examples.search)]
    add = tools.tools()[0]
    assert add["type"] == "function" and add["function"]["name"] == "add"
    assert add["function"]["parameters"]["properties"]["a"] == {"type": "integer", "description": "The first integer."}
    assert add["function"]["parameters"]["required"] == ["a", "b"]
    assert tools.tools()[1]["function"]["parameters"]["required"] == ["query"]      # limit has a default


@pytest.mark.parametrize("function, missing", [
    ("tests.tool_examples:undocumented", "has no docstring"),
    ("tests.tool_examples:untyped", "missing a type hint"),
])
def test_a_function_the_model_cannot_be_told_about_is_refused(function, missing):
    with pytest.raises(ValueError, match=rf"tool {function} cannot be described to the model: .*{missing}.*Args:"):
        Tools([ADD, function])


@pytest.mark.parametrize("functions, error", [
    ([ADD, tool_examples.add], "more than one function is named add"),
    (["tests.tool_examples:nothing"], "tool 'tests.tool_examples:nothing': module 'tests.tool_examples' has no "
                                      "function 'nothing'"),
    ([], "at least one function"),
])
def test_duplicate_names_and_missing_functions_are_refused(functions, error):
    with pytest.raises(ValueError, match=error):
        Tools(functions)


def test_the_parser_reads_one_call_two_calls_and_text_around_them():
    assert parse_tool_calls(call("add", a=1, b=2)) == [ToolCall("add", {"a": 1, "b": 2})]
    text = f"Let me add.\n{call('add', a=1, b=2)}\nand search\n{call('search', query='cats')}\nthen answer."
    assert parse_tool_calls(text) == [ToolCall("add", {"a": 1, "b": 2}), ToolCall("search", {"query": "cats"})]
    assert parse_tool_calls("The answer is 3.") == []
    assert parse_tool_calls('<tool_call>{"name": "ping"}</tool_call>') == [ToolCall("ping", {})]
    # unclosed (cut off by max_new_tokens, or closing tag forgotten): a block to the next one or the end
    unclosed = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}} <tool_call>{"name": "ping"}'
    assert parse_tool_calls(unclosed) == [ToolCall("add", {"a": 1, "b": 2}), ToolCall("ping", {})]


@pytest.mark.parametrize("body, name, error", [
    ('{"name": "add", "arguments": {"a": 1,}}', "", "malformed JSON in <tool_call>: Expecting property name"),
    ('{"name": "add", "arguments": [1, 2]}', "add", "the arguments of add must be a JSON object, got list"),
    ('{"name": "add", "arguments": "{\\"a\\": 1}"}', "add", "the arguments of add must be a JSON object, got str"),
    ('{"arguments": {"a": 1}}', "", "a <tool_call> must name its tool"),
    ('["add", 1, 2]', "", "a <tool_call> must hold a JSON object {\"name\": ..., \"arguments\": {...}}, got list"),
])
def test_a_malformed_block_is_a_call_with_an_error(body, name, error):
    [parsed] = parse_tool_calls(f"<tool_call>{body}</tool_call>")
    assert parsed.name == name and parsed.arguments == {} and parsed.error.startswith(error)


def test_a_step_runs_the_calls_in_order_and_returns_tool_messages():
    tools = Tools([ADD, "tests.tool_examples:search"])
    step = tools.step(f"{call('add', a=2, b=3)}{call('search', query='cats', limit=2)}")
    assert step == EnvStep(observation=[
        {"role": "tool", "name": "add", "content": "5"},
        {"role": "tool", "name": "search", "content": '["note 0 on cats", "note 1 on cats"]'},
    ])


@pytest.mark.parametrize("result, text", [
    ("3 notes found", "3 notes found"), ({"hits": [1, 2], "query": "café"}, '{"hits": [1, 2], "query": "café"}'),
    (None, "null"), (datetime.date(2025, 1, 2), '"2025-01-02"'),
])
def test_a_result_is_text_as_it_is_and_anything_else_json(result, text):
    assert as_text(result) == text


def test_a_turn_without_calls_is_the_final_answer():
    assert Tools([ADD]).step("2 + 3 = 5, so the answer is 5.") == EnvStep(done=True)


def test_bad_calls_become_errors_the_model_reads():
    tools = Tools([ADD, "tests.tool_examples:search", "tests.tool_examples:fail"])
    step = tools.step(call("multiply", a=2, b=3) + call("add", a=2) + call("add", a=2, b=3, c=4)
                      + call("fail", reason="disk full") + '<tool_call>{"name": add}</tool_call>')
    assert contents(step) == [
        "error: unknown tool 'multiply'; available: add, search, fail",
        "error: wrong arguments for add: missing a required argument: 'b'",
        "error: wrong arguments for add: got an unexpected keyword argument 'c'",
        "error: fail raised RuntimeError: disk full",
        "error: malformed JSON in <tool_call>: Expecting value: line 1 column 10 (char 9)",
    ]
    assert [m["name"] for m in step.observation] == ["multiply", "add", "add", "fail", ""]


def test_a_hanging_tool_times_out_without_holding_up_the_episode():
    """The hung call goes on sleeping in its daemon thread; the step returns after the timeout, and the next
    call runs at once."""
    tools = Tools(["tests.tool_examples:hang", ADD], timeout=0.2)
    start = time.monotonic()
    step = tools.step(call("hang", seconds=5) + call("add", a=1, b=1))
    assert contents(step) == ["error: hang did not return within 0.2 s", "2"]
    assert time.monotonic() - start < 2.0


def test_the_episode_ends_once_it_goes_over_max_tool_calls_and_reset_starts_the_count_again():
    tools = copy.deepcopy(Tools([ADD], max_tool_calls=3))                 # as the collector copies it per episode
    assert contents(tools.step(call("add", a=1, b=1) + call("add", a=2, b=2))) == ["2", "4"]
    assert contents(tools.step(call("add", a=3, b=3))) == ["6"]         # the third call: still within the budget
    assert tools.step(call("add", a=4, b=4)) == EnvStep(done=True)     # the fourth: over it, and not run
    assert tools.calls == 4
    tools.reset("What is 1 + 1?", {})
    assert tools.calls == 0 and contents(tools.step(call("add", a=1, b=1))) == ["2"]


def test_a_parser_given_by_dotted_path_reads_another_format():
    tools = Tools(["tests.tool_examples:ping"], parser="tests.tool_examples:angle_calls")
    assert contents(tools.step("first <<ping>> then <<pong>>")) == [
        "pong", "error: unknown tool 'pong'; available: ping"]
    assert tools.step(call("ping")) == EnvStep(done=True)             # <tool_call> is not its format


def test_a_qwen_style_template_lists_the_tools_and_renders_their_results_as_tool_responses():
    tokenizer = char_tokenizer(CHAT_ALPHABET, QWEN_STYLE_WORDS, QWEN_STYLE_TOOLS)
    tools = Tools([ADD])
    completion = call("add", a=2, b=3)
    messages = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": completion},
                *tools.step(completion).observation]
    text = tokenizer.apply_chat_template(messages, tools=tools.tools(), tokenize=False, add_generation_prompt=True)
    schema = ('{"type": "function", "function": {"name": "add", "description": "Add two integers.", "parameters": '
              '{"type": "object", "properties": {"a": {"type": "integer", "description": "The first integer."}, "b": '
              '{"type": "integer", "description": "The second integer."}}, "required": ["a", "b"]}, "return": '
              '{"type": "integer"}}}')
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n")
    assert f"<tools>\n{schema}\n</tools>" in text
    assert text.endswith(f"<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n{completion}<|im_end|>\n"
                         f"<|im_start|>user\n<tool_response>\n5\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
