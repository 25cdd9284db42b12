"""PromptData reads any prompt dataset and names a bad row by file and line; render_prompt turns text or chat
messages into what the model sees; OfflineData accepts conversational rows."""

import copy
import json

import pytest
from transformers import AutoTokenizer

from lit_rl import OfflineData, PromptData, render_prompt
from lit_rl.tiny import CHAT_ALPHABET, CHAT_TEMPLATE, CHAT_WORDS, build_tiny_model

ROWS = [{"question": f"q{i}", "answer": str(i), "level": i % 3} for i in range(10)]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(build_tiny_model(
        tmp_path_factory.mktemp("chat"), hidden_size=32, num_layers=1, alphabet=CHAT_ALPHABET, words=CHAT_WORDS,
        chat_template=CHAT_TEMPLATE))


def test_prompts_and_columns_from_jsonl(tmp_path):
    data = PromptData(write_jsonl(tmp_path / "p.jsonl", ROWS), prompt="question", columns=["answer"], batch_size=4)
    data.setup("fit")
    assert data.train_rows[3] == {"prompt": "q3", "meta": {"answer": "3"}, "where": f"{tmp_path / 'p.jsonl'}:4"}
    batch = next(iter(data.train_dataloader()))
    assert len(batch["prompt"]) == 4 and set(batch) == {"prompt", "meta", "where"}
    everything = PromptData(str(tmp_path / "p.jsonl"), prompt="question")
    everything.setup("fit")
    assert everything.train_rows[0]["meta"] == {"answer": "0", "level": 0}   # default: every other column
    assert data.val_dataloader() == []                                      # no held-out split asked for


def test_csv_parquet_and_saved_datasets_read_alike(tmp_path):
    import datasets

    source = datasets.Dataset.from_list(ROWS)
    source.to_csv(str(tmp_path / "p.csv"))
    source.to_parquet(str(tmp_path / "p.parquet"))
    source.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": source, "test": source.select(range(3))}).save_to_disk(str(tmp_path / "dict"))
    for path in ("p.csv", "p.parquet", "saved"):
        data = PromptData(str(tmp_path / path), prompt="question", columns=["answer"])
        data.setup("fit")
        assert [r["prompt"] for r in data.train_rows] == [r["question"] for r in ROWS], path
    split = PromptData(str(tmp_path / "dict"), prompt="question", val_split="test")
    split.setup("fit")
    assert len(split.train_rows) == 10 and len(split.val_rows) == 3


def test_val_fraction_is_seeded_and_disjoint(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    splits = []
    for seed in (0, 0, 1):
        data = PromptData(path, prompt="question", val_fraction=0.3, seed=seed)
        data.setup("fit")
        train, val = [r["prompt"] for r in data.train_rows], [r["prompt"] for r in data.val_rows]
        assert len(val) == 3 and not set(train) & set(val) and len(train) + len(val) == 10
        splits.append(val)
    assert splits[0] == splits[1] != splits[2]


def test_builtin_countdown_prompts_ship():
    data = PromptData("builtin:countdown-prompts.jsonl", val_path="builtin:countdown-prompts-val.jsonl")
    data.setup("fit")
    assert len(data.train_rows) == 4000 and len(data.val_rows) == 500
    assert set(data.train_rows[0]["meta"]) == {"numbers", "target"}


@pytest.mark.parametrize("rows, settings, message", [
    ([{"question": "a"}, {"query": "b"}], {"prompt": "question"}, r"p.jsonl:2: column 'question' is missing"),
    ([{"question": "a"}], {"prompt": "question", "columns": ["answer"]}, r"p.jsonl:1: column 'answer' is missing"),
    ([{"prompt": [{"role": "user", "content": "a"}]}, {"prompt": [{"role": "robot", "content": "b"}]}], {},
     r"p.jsonl:2: 'prompt' message 0 has role 'robot'"),
    ([{"prompt": [{"role": "user"}]}], {}, r"p.jsonl:1: 'prompt' message 0 must be an object with 'role' and 'content'"),
    ([{"prompt": 7}], {}, r"p.jsonl:1: 'prompt' must be text or a non-empty list of chat messages, got int"),
    ([], {}, r"has no rows"),
])
def test_bad_rows_are_named_by_file_and_line(tmp_path, rows, settings, message):
    data = PromptData(write_jsonl(tmp_path / "p.jsonl", rows), **settings)
    with pytest.raises(ValueError, match=message):
        data.setup("fit")


def test_bad_settings_and_paths_are_named(tmp_path):
    with pytest.raises(ValueError, match="at most one of val_path, val_split and val_fraction"):
        PromptData("x.jsonl", val_split="test", val_fraction=0.1)
    with pytest.raises(FileNotFoundError, match="no dataset file 'missing.jsonl'"):
        PromptData("missing.jsonl").setup("fit")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        PromptData(str(tmp_path / "broken.jsonl")).setup("fit")


def test_render_plain_text_without_a_template(chat_tokenizer):
    assert render_prompt(chat_tokenizer, "2 + 2 =", chat_template=False) == "2 + 2 ="
    with pytest.raises(ValueError, match="list of chat messages but chat_template is false"):
        render_prompt(chat_tokenizer, [{"role": "user", "content": "hi"}], chat_template=False)
    with pytest.raises(ValueError, match="system_prompt needs a chat template"):
        render_prompt(chat_tokenizer, "hi", chat_template=False, system_prompt="be brief")


def test_render_with_the_tokenizers_template(chat_tokenizer):
    """auto: the tokenizer has a template, so plain text becomes one user message; the generation prompt opens
    the assistant's turn; a system prompt leads unless the conversation has its own."""
    assert render_prompt(chat_tokenizer, "hi") == "<|user|>hi\n<|assistant|>"
    assert render_prompt(chat_tokenizer, "hi", system_prompt="be brief") == "<|system|>be brief\n<|user|>hi\n<|assistant|>"
    own = [{"role": "system", "content": "mine"}, {"role": "user", "content": "hi"}]
    assert render_prompt(chat_tokenizer, own, system_prompt="be brief") == "<|system|>mine\n<|user|>hi\n<|assistant|>"
    prefill = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>"}]
    assert render_prompt(chat_tokenizer, prefill) == "<|user|>hi\n<|assistant|><think>"   # continued, not closed


def test_chat_template_kwargs_reach_the_template(chat_tokenizer):
    chat_tokenizer = copy.deepcopy(chat_tokenizer)
    chat_tokenizer.chat_template = "{{ messages[0]['content'] }}{% if enable_thinking %}<think>{% endif %}"
    assert render_prompt(chat_tokenizer, "hi", chat_template_kwargs={"enable_thinking": True}) == "hi<think>"
    assert render_prompt(chat_tokenizer, "hi", chat_template_kwargs={"enable_thinking": False}) == "hi"


def test_messages_need_a_template(chat_tokenizer):
    bare = copy.deepcopy(chat_tokenizer)
    bare.chat_template = None
    assert render_prompt(bare, "hi") == "hi"                                # auto: no template, plain text
    with pytest.raises(ValueError, match="has no chat template"):
        render_prompt(bare, [{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="has no chat template"):
        render_prompt(bare, "hi", chat_template=True)


def test_offline_data_takes_conversational_rows(tmp_path):
    prompt = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    rows = [{"prompt": prompt, "completion": [{"role": "assistant", "content": f"a{i}"}], "reward": float(i)}
            for i in range(2)]
    rows += [{"prompt": [{"role": "user", "content": "r"}], "chosen": [{"role": "assistant", "content": "good"}],
              "rejected": [{"role": "assistant", "content": "bad"}]}]
    scored = OfflineData(write_jsonl(tmp_path / "scored.jsonl", rows[:2]), batch_size=1)
    scored.setup("fit")
    assert scored.groups[0]["prompt"] == prompt and scored.groups[0]["completions"] == ["a0", "a1"]
    assert scored.groups[0]["correct"] == [None, None] and scored.val_dataloader() == []
    pairs = OfflineData(write_jsonl(tmp_path / "pairs.jsonl", rows[2:]), batch_size=1)
    pairs.setup("fit")
    assert pairs.groups[0]["completions"] == ["good", "bad"]
    bad = [{**rows[0], "completion": [{"role": "user", "content": "a"}]}]
    with pytest.raises(ValueError, match=r"bad.jsonl:1: 'completion' as messages must hold assistant messages only"):
        OfflineData(write_jsonl(tmp_path / "bad.jsonl", bad), batch_size=1).setup("fit")
