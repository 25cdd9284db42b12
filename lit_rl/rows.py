"""Reading dataset rows, each named by where it came from (``prompts.jsonl:17``) so a bad one can be pointed at.

A dataset is JSONL (``.jsonl``/``.ndjson``) or JSON, CSV, Parquet (suffixes in any case; all but Parquet may be
gzipped, ``.jsonl.gz``), a directory saved by ``datasets`` (``save_to_disk``), ``builtin:NAME`` (shipped in
``lit_rl/assets``) or a hub dataset id (with an optional config ``name`` and a ``split``). Text files are UTF-8.
"""

import csv
import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Any

from lit_rl.policy import resolve

Row = tuple[str, dict[str, Any]]                                       # (where, row)
ROLES = ("system", "user", "assistant", "tool")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SUPPORTED = ".jsonl, .ndjson, .json, .csv, .parquet, and .jsonl.gz, .ndjson.gz, .json.gz, .csv.gz"
SAVED = ("dataset_dict.json", "dataset_info.json", "state.json")       # what save_to_disk writes


def read_rows(path: str, name: str | None = None, split: str = "train") -> list[Row]:
    """Every row of ``path`` with its location; a missing file is named rather than tried as a hub id."""
    source = Path(resolve(path))
    if source.is_file():
        return _file_rows(source)
    if source.is_dir():
        return _saved_rows(source, split)
    if file_format(source.name) or source.suffix.lower() == ".gz" or path.startswith((".", "/", "~")) \
            or path.count("/") > 1:
        raise FileNotFoundError(f"no dataset file {path!r} (looked for {source.resolve()})")
    import datasets

    try:
        dataset = datasets.load_dataset(path, name, split=split)
    except Exception as err:
        raise ValueError(f"cannot load the hub dataset {path!r} (name={name!r}, split={split!r}): {err}. No such "
                         f"file or directory exists either; offline runs need a local file or a saved dataset") from err
    return [(f"{path} row {i}", row) for i, row in enumerate(dataset)]


def _saved_rows(source: Path, split: str) -> list[Row]:
    """A directory written by ``save_to_disk`` (one split of a ``DatasetDict``); any other directory is named
    with what it holds, rather than left to ``load_from_disk``'s traceback."""
    import datasets

    if not any((source / saved).is_file() for saved in SAVED):
        found = sorted(p.name for p in source.iterdir())
        shown = found[:5] + ["..."] * (len(found) > 5) if found else "nothing"
        raise ValueError(f"{source} is a directory but not a dataset saved by datasets' save_to_disk (which holds "
                         f"dataset_dict.json, or dataset_info.json and state.json); it holds {shown}. To read a file "
                         f"inside it, give the file's path")
    dataset = datasets.load_from_disk(str(source))
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"{source} has splits {sorted(dataset)}, not {split!r}")
        dataset = dataset[split]
    return [(f"{source} row {i}", row) for i, row in enumerate(dataset)]


def has_splits(path: str) -> bool:
    """Whether ``path`` has named splits: a hub dataset or a saved ``DatasetDict`` has, a file or a saved
    ``Dataset`` has not (a missing path is left to :func:`read_rows` to name)."""
    source = Path(resolve(path))
    return (source / "dataset_dict.json").is_file() if source.is_dir() else not source.is_file()


def file_format(name: str) -> str | None:
    """``jsonl``, ``json``, ``csv`` or ``parquet`` by a file's suffix, in any case and behind ``.gz`` (not for
    Parquet, which compresses itself); ``None`` for anything else."""
    lower = name.lower()
    plain = lower.removesuffix(".gz")
    fmt = FORMATS.get(Path(plain).suffix)
    return None if fmt == "parquet" and plain != lower else fmt


def _file_rows(source: Path) -> list[Row]:
    fmt = file_format(source.name)
    if fmt is None:
        raise ValueError(f"{source}: unsupported dataset file type; the supported suffixes are {SUPPORTED} (in any "
                         f"case), or give a directory saved by datasets' save_to_disk")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return [(f"{source} row {i}", row) for i, row in enumerate(pq.read_table(source).to_pylist())]
    text = _utf8(source, _bytes(source))
    return _csv_rows(source, text) if fmt == "csv" else _json_rows(source, text, fmt)


def _bytes(source: Path) -> bytes:
    """The file's bytes, gunzipped for ``.gz``."""
    data = source.read_bytes()
    if source.suffix.lower() != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:            # the ways in-memory gunzip fails
        raise ValueError(f"{source}: not a readable gzip file ({err})") from None


def _utf8(source: Path, data: bytes) -> str:
    """The text of a UTF-8 file (a leading byte-order mark, as spreadsheets write, is dropped); other bytes are
    named by line and offset rather than left to fail somewhere later."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{source}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at byte offset "
                         f"{err.start}); save the file as UTF-8") from None


def _json_rows(source: Path, text: str, fmt: str) -> list[Row]:
    if fmt == "json" and text.lstrip().startswith("["):                 # one JSON array
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}:{err.lineno}: not valid JSON ({err.msg})") from None
        rows = [(f"{source} item {i}", row) for i, row in enumerate(items)]
    else:                                                               # one JSON object per line
        rows = []
        for number, line in enumerate(text.split("\n"), 1):            # not splitlines(): U+2028 is no line end
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


def _csv_rows(source: Path, text: str) -> list[Row]:
    """CSV rows, typed as pyarrow's CSV reader infers each column (integers, floats, ``true``/``false``, text; an
    empty or ``NA`` cell of a number column is ``None``; dates stay text), and, since CSV has no list type, a text
    cell that is a JSON array or object (``[3, 5, 7]``) decoded as JSON. A row is named by the line it starts on
    (a quoted cell may span lines) and refused when its cell count differs from the header's."""
    lines = _csv_lines(source, text)
    if not lines:
        return []
    table = _typed_table(source, text.encode())
    if table.num_rows != len(lines):                                    # the two readers must agree on the rows
        raise ValueError(f"{source}: pyarrow reads {table.num_rows} CSV rows where Python's csv module reads "
                         f"{len(lines)}; check the file's quoting")
    return [(f"{source}:{line}", {k: _json_cell(v) for k, v in row.items()})
            for line, row in zip(lines, table.to_pylist(), strict=True)]


def _csv_lines(source: Path, text: str) -> list[int]:
    """The line each data row starts on, checking the header's names are distinct and each row's cell count."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    lines, end = [], 0
    try:
        for cells in reader:
            start, end = end + 1, reader.line_num
            if not cells:                                               # a blank line
                continue
            if header is None:
                header = cells
                twice = sorted({name for name in cells if cells.count(name) > 1})
                if twice:
                    raise ValueError(f"{source}:{start}: the CSV header names the columns {twice} more than once")
            elif len(cells) != len(header):
                raise ValueError(f"{source}:{start}: {len(cells)} cells where the header has {len(header)} columns "
                                 f"{header}")
            else:
                lines.append(start)
    except csv.Error as err:
        raise ValueError(f"{source}:{end + 1}: not valid CSV ({err})") from None    # the row it began
    return lines


def _typed_table(source: Path, data: bytes) -> Any:
    """The CSV as a pyarrow table whose columns are numbers, booleans or text (a date column is read again as
    text: rows hold what JSON can)."""
    import pyarrow as pa
    import pyarrow.csv as pc

    def read(types: dict) -> pa.Table:
        try:
            return pc.read_csv(pa.BufferReader(data), parse_options=pc.ParseOptions(newlines_in_values=True),
                               convert_options=pc.ConvertOptions(column_types=types))
        except pa.ArrowInvalid as err:
            raise ValueError(f"{source}: not valid CSV ({err})") from None

    table = read({})
    plain = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_null, pa.types.is_string)
    other = {field.name: pa.string() for field in table.schema if not any(is_(field.type) for is_ in plain)}
    return read(other) if other else table


def _json_cell(value: Any) -> Any:
    """A text cell that is a JSON array or object, decoded; any other value as it is."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:                                    # text that merely starts with a bracket
            return value
    return value


def check_text(where: str, what: str, text: str) -> None:
    """Text the tokenizer can take: UTF-8 encodable. JSON's ``"\\ud800"`` (half a surrogate pair) is valid JSON but
    no character, and would otherwise crash the tokenizer mid-run."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{where}: {what} has {text[err.start]!r} at character {err.start}, which is not a character "
                         f"(a lone surrogate, as JSON's \\ud800 escape makes) and cannot be encoded as UTF-8") from None


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
        check_text(where, f"{field!r} message {k} content", message["content"])


def check_prompt(where: str, field: str, value: Any) -> None:
    """A prompt is non-empty text or a chat conversation."""
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{where}: {field!r} is empty")
        check_text(where, repr(field), value)
        return
    check_messages(where, field, value)


def completion_text(where: str, field: str, value: Any) -> str:
    """A completion as text: given as text, or as assistant messages (conversational datasets), joined."""
    if isinstance(value, str):
        check_text(where, repr(field), value)
        return value
    check_messages(where, field, value)
    if any(m["role"] != "assistant" for m in value):
        raise ValueError(f"{where}: {field!r} as messages must hold assistant messages only")
    return "".join(m["content"] for m in value)
