"""Reading dataset rows, each named by where it came from (``prompts.jsonl:17``) so a bad one can be pointed at.

A dataset is JSONL or JSON, CSV, Parquet, a directory saved by ``datasets`` (``save_to_disk``), ``builtin:NAME``
(shipped in ``lit_rl/assets``) or a hub dataset id (with an optional config ``name`` and a ``split``).
"""

import csv
import json
from pathlib import Path
from typing import Any

from lit_rl.policy import resolve

Row = tuple[str, dict[str, Any]]                                       # (where, row)
ROLES = ("system", "user", "assistant", "tool")
FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_rows(path: str, name: str | None = None, split: str = "train") -> list[Row]:
    """Every row of ``path`` with its location; a missing file is named rather than tried as a hub id."""
    source = Path(resolve(path))
    if source.suffix in (".jsonl", ".json") and source.is_file():
        return _json_rows(source)
    if source.suffix == ".csv" and source.is_file():
        with source.open(newline="") as f:
            reader = csv.DictReader(f)
            return [(f"{source}:{reader.line_num}", dict(row)) for row in reader]
    if source.suffix == ".parquet" and source.is_file():
        import pyarrow.parquet as pq

        return [(f"{source} row {i}", row) for i, row in enumerate(pq.read_table(source).to_pylist())]
    import datasets

    if source.is_dir():
        dataset = datasets.load_from_disk(str(source))
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"{source} has splits {sorted(dataset)}, not {split!r}")
            dataset = dataset[split]
        return [(f"{source} row {i}", row) for i, row in enumerate(dataset)]
    if source.suffix in FILE_SUFFIXES or path.startswith((".", "/", "~")) or path.count("/") > 1:
        raise FileNotFoundError(f"no dataset file {path!r} (looked for {source.resolve()})")
    try:
        dataset = datasets.load_dataset(path, name, split=split)
    except Exception as err:
        raise ValueError(f"cannot load the hub dataset {path!r} (name={name!r}, split={split!r}): {err}. No such "
                         f"file or directory exists either; offline runs need a local file or a saved dataset") from err
    return [(f"{path} row {i}", row) for i, row in enumerate(dataset)]


def _json_rows(source: Path) -> list[Row]:
    text = source.read_text()
    if source.suffix == ".json" and text.lstrip().startswith("["):          # one JSON array
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}:{err.lineno}: not valid JSON ({err.msg})") from None
        rows = [(f"{source} item {i}", row) for i, row in enumerate(items)]
    else:                                                               # one JSON object per line
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{source}:{number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{source}:{number}: not valid JSON ({err.msg})") from None
    for where, row in rows:
        if not isinstance(row, dict):
            raise ValueError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    return rows


def check_messages(where: str, field: str, value: Any) -> None:
    """A chat conversation: a non-empty list of ``{role, content}`` with known roles and text content."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: {field!r} must be text or a non-empty list of chat messages, got "
                         f"{type(value).__name__}")
    for k, message in enumerate(value):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"{where}: {field!r} message {k} must be an object with 'role' and 'content', "
                             f"got {message!r:.200}")
        if message["role"] not in ROLES:
            raise ValueError(f"{where}: {field!r} message {k} has role {message['role']!r}; roles are {list(ROLES)}")
        if not isinstance(message["content"], str):
            raise ValueError(f"{where}: {field!r} message {k} content must be text, got "
                             f"{type(message['content']).__name__}")


def check_prompt(where: str, field: str, value: Any) -> None:
    """A prompt is non-empty text or a chat conversation."""
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{where}: {field!r} is empty")
        return
    check_messages(where, field, value)


def completion_text(where: str, field: str, value: Any) -> str:
    """A completion as text: given as text, or as assistant messages (conversational datasets), joined."""
    if isinstance(value, str):
        return value
    check_messages(where, field, value)
    if any(m["role"] != "assistant" for m in value):
        raise ValueError(f"{where}: {field!r} as messages must hold assistant messages only")
    return "".join(m["content"] for m in value)
