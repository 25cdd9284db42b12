"""PromptData reads any prompt dataset and names a bad row by file and line; render_prompt turns text or chat
messages into what the model sees; OfflineData accepts conversational rows."""

import copy
import csv
import gzip
import json

import pytest
from transformers import AutoTokenizer

from lit_rl import CountdownReward, OfflineData, PromptData, render_prompt
from lit_rl.policy import resolve
from lit_rl.rows import read_rows
from lit_rl.tasks.countdown.puzzles import make_split
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
    ([{"prompt": "ok"}, {"prompt": "ab\ud800"}], {},
     r"p.jsonl:2: 'prompt' has '\\ud800' at character 2, which is not a character .* cannot be encoded as UTF-8"),
    ([{"prompt": [{"role": "user", "content": "\udc00x"}]}], {},
     r"p.jsonl:1: 'prompt' message 0 content has '\\udc00' at character 0"),
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


def test_a_file_has_no_splits(tmp_path):
    """val_split on a file would validate on the training rows themselves; a saved DatasetDict keeps its splits
    (test_csv_parquet_and_saved_datasets_read_alike)."""
    import datasets

    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dict"))
    for source in (path, str(tmp_path / "saved")):
        with pytest.raises(ValueError, match=r"val_split='test', but .* has no splits, so validation would run on "
                                             r"the training rows; hold prompts out with val_path .* or val_fraction"):
            PromptData(source, prompt="question", val_split="test").setup("fit")
    with pytest.raises(ValueError, match=r"split='test', but .*p.jsonl is a file .* and has no splits"):
        PromptData(path, prompt="question", split="test").setup("fit")
    with pytest.raises(ValueError, match=r"val_split='train' is the training split too"):
        PromptData(str(tmp_path / "dict"), prompt="question", val_split="train").setup("fit")


def write_csv(path, rows) -> str:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_a_csv_copy_of_the_countdown_prompts_trains_like_the_jsonl(tmp_path):
    """Numbers come back as numbers and ``[18, 5, 14]`` as a list, so the reward scores the CSV rows as it does
    the JSONL's; the prompts end in a newline, so every row spans two lines and is named by its first."""
    shipped = resolve("builtin:countdown-prompts.jsonl")
    rows = [json.loads(line) for line in open(shipped)]
    jsonl, copy = PromptData(shipped), PromptData(write_csv(tmp_path / "p.csv", rows))
    jsonl.setup("fit"), copy.setup("fit")
    def content(rows):                                                  # what a row holds, not where it is
        return [{k: v for k, v in row.items() if k != "where"} for row in rows]

    assert content(copy.train_rows) == content(jsonl.train_rows)
    assert copy.train_rows[0]["meta"] == {"numbers": [18, 5, 14], "target": 1}
    assert [row["where"] for row in copy.train_rows[:2]] == [f"{tmp_path}/p.csv:{n}" for n in (2, 4)]
    reward = CountdownReward()
    for row, puzzle in zip(copy.train_rows[:50], make_split("train", 50)):
        assert reward(f"<answer>{puzzle.solution}</answer>", row["meta"]).correct, row
    wheres = [where for where, _ in read_rows(str(tmp_path / "p.csv"))[:3]]
    assert wheres == [f"{tmp_path}/p.csv:{n}" for n in (2, 4, 6)]


def test_csv_cells_are_typed_and_counted(tmp_path):
    (tmp_path / "p.csv").write_text('prompt,n,x,ok,when,list,text\n'
                                    'a,1,1.5,true,2024-01-01,"[1, ""b""]",[not json\n'
                                    '\n'
                                    '"two\nlines",,2,false,2024-01-02,"{""k"": 1}",plain\n')
    data = PromptData(str(tmp_path / "p.csv"))
    data.setup("fit")
    assert [r["meta"] for r in data.train_rows] == [
        {"n": 1, "x": 1.5, "ok": True, "when": "2024-01-01", "list": [1, "b"], "text": "[not json"},
        {"n": None, "x": 2.0, "ok": False, "when": "2024-01-02", "list": {"k": 1}, "text": "plain"}]
    assert data.train_rows[1]["prompt"] == "two\nlines"
    assert [where for where, _ in read_rows(str(tmp_path / "p.csv"))] == [f"{tmp_path}/p.csv:2", f"{tmp_path}/p.csv:4"]
    for name, text, message in [
        ("ragged", 'prompt,answer\n"a\nb",1\nc\nd,4\n', r":4: 1 cells where the header has 2 columns \['prompt', 'an"),
        ("long", 'prompt,answer\na,1,extra\n', r":2: 3 cells where the header has 2 columns"),
        ("twice", 'prompt,a,a\nx,1,2\n', r":1: the CSV header names the columns \['a'\] more than once"),
        ("open", 'prompt,a\nx,"1\n', r":2: not valid CSV \(unexpected end of data\)"),
    ]:
        (tmp_path / f"{name}.csv").write_text(text)
        with pytest.raises(ValueError, match=rf"{name}.csv{message}"):
            PromptData(str(tmp_path / f"{name}.csv")).setup("fit")


def test_val_fraction_splits_by_distinct_prompt_and_duplicates_warn(tmp_path):
    rows = [{"prompt": f"q{i % 6}", "copy": i} for i in range(18)]           # each prompt three times
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    for seed in range(5):
        with pytest.warns(UserWarning) as caught:
            data = PromptData(path, val_fraction=0.5, seed=seed)
            data.setup("fit")
        train, val = {r["prompt"] for r in data.train_rows}, {r["prompt"] for r in data.val_rows}
        assert not train & val and len(train) == len(val) == 3 and len(data.val_rows) == 9
    assert len(caught) == 1 and str(caught[0].message).startswith(
        f"PromptData: 12 rows of {path} repeat an earlier prompt ({path}:7 repeats {path}:1; {path}:8 repeats "
        f"{path}:2; {path}:9 repeats {path}:3; ...); each copy is sampled as a prompt of its own")


@pytest.mark.parametrize("name", ["p.ndjson", "p.JSONL", "P.Json", "p.jsonl.gz", "p.json.gz", "p.csv.gz", "p.CSV"])
def test_jsonl_ndjson_and_gzip_files_in_any_case(tmp_path, name):
    text = "".join(json.dumps(r) + "\n" for r in ROWS)
    if ".csv" in name.lower():
        text = "question,answer,level\n" + "".join(f"{r['question']},{r['answer']},{r['level']}\n" for r in ROWS)
    data = text.encode()
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    prompts = PromptData(str(tmp_path / name), prompt="question")
    prompts.setup("fit")
    assert [r["prompt"] for r in prompts.train_rows] == [r["question"] for r in ROWS]


def test_file_format_errors_say_what_is_wrong(tmp_path):
    (tmp_path / "p.txt").write_text('{"prompt": "a"}\n')
    (tmp_path / "p.parquet.gz").write_bytes(b"")
    for name in ("p.txt", "p.parquet.gz"):
        with pytest.raises(ValueError, match=r"unsupported dataset file type; the supported suffixes are \.jsonl, "
                                             r"\.ndjson, \.json, \.csv, \.parquet, and \.jsonl\.gz"):
            PromptData(str(tmp_path / name)).setup("fit")
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "a"}\n{"prompt": "café"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9 at byte offset 31\); save the "
                                         r"file as UTF-8"):
        PromptData(str(tmp_path / "latin1.jsonl")).setup("fit")
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match=r"bad.jsonl.gz: not a readable gzip file"):
        PromptData(str(tmp_path / "bad.jsonl.gz")).setup("fit")
    folder = tmp_path / "folder"
    folder.mkdir()
    for k in range(7):
        (folder / f"part{k}.jsonl").write_text('{"prompt": "a"}\n')
    with pytest.raises(ValueError, match=r"folder is a directory but not a dataset saved by datasets' save_to_disk "
                                         r"\(which holds dataset_dict.json, or dataset_info.json and state.json\); "
                                         r"it holds \['part0.jsonl', .*'part4.jsonl', '...'\]. To read a file"):
        PromptData(str(folder)).setup("fit")
    (tmp_path / "u2028.jsonl").write_text(json.dumps({"prompt": "a\u2028b"}, ensure_ascii=False) + "\n")
    one = PromptData(str(tmp_path / "u2028.jsonl"))
    one.setup("fit")
    assert one.train_rows[0]["prompt"] == "a\u2028b"                        # a line separator inside a string


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
