"""A reward served over HTTP: one JSON batch POSTed, one score per completion read back (OpenRLHF's remote reward
protocol, so a server written for ``--remote_rm_url`` scores here too)."""

import asyncio
import json
import math
import os
import re
import urllib.parse
from typing import Any

from lit_rl.http_client import fetch, parse_json
from lit_rl.rewards.base import Columns, Prompt, RewardFunction, Score

ENV_VAR = re.compile(r"\$\{(\w+)\}")                                    # ${NAME} in a header value


class RemoteReward(RewardFunction):
    """Scores from a reward server: each batch of completions is POSTed to ``url`` as one JSON object, and the
    answer holds one score per completion.

    Request (``Content-Type: application/json``)::

        {"query":       [prompt + completion, ...],   # text prompts: the two texts joined; chat prompts: the
                                                      #   messages plus {"role": "assistant", "content": completion}
         "prompts":     [prompt, ...],                # as in the dataset: text, or a list of {role, content}
         "completions": [completion, ...],            # the decoded completion texts
         "labels":      [value, ...],                 # the column ``label_column`` (only when it is set)
         "columns":     {name: [value, ...], ...}}    # every dataset column, one value per completion

    Answer: ``{"rewards": [float | null, ...]}``, optionally with ``"correct": [bool | null, ...]`` (reported as
    accuracy); a bare JSON list of numbers is accepted too. ``null`` is "no opinion", allowed inside
    :class:`lit_rl.Rewards` as for any reward. Other keys (OpenRLHF's ``scores``, ``extra_logs``) are ignored.

    This is OpenRLHF's protocol (``remote_rm_fn``: ``{"query", "prompts", "labels"}`` in, ``rewards`` out) with
    three departures:
      1. ``query`` is the raw prompt text followed by the completion: no chat template is applied (the server
         knows its own; chat prompts arrive as messages, so it can render them).
      2. ``completions`` and ``columns`` are sent as well, so a server need not split ``query`` to find the answer.
      3. ``timeout`` bounds each wait for the server (connecting, each read), not a whole answer that keeps
         arriving; requests that time out, fail to connect or get HTTP 429 or 5xx are retried ``retries`` times
         after ``backoff``, ``2 * backoff``, ... seconds; an HTTP 4xx, a redirect or a malformed answer is not.

    ``batch_size`` splits a step's completions into several requests, sent together (concurrently) and their
    scores joined in order; several ``RemoteReward`` inside one :class:`lit_rl.Rewards` are also asked together
    (:meth:`score` is asynchronous: called directly it returns an awaitable, as :func:`lit_rl.rewards.score_batch`
    and ``Rewards`` expect).
    Nothing the server returns is executed, and nothing but the JSON batch (and ``headers``) is sent; header values
    never appear in an error message or the reward's ``repr``, and a ``${NAME}`` in one is read from the environment
    (a run's ``config.yaml`` keeps the settings as written).
    """

    def __init__(self, url: str, name: str = "remote", timeout: float = 60.0, retries: int = 2, backoff: float = 1.0,
                 headers: dict[str, str] | None = None, batch_size: int | None = None,
                 label_column: str | None = None) -> None:
        """
        Args:
            url: the server's address, ``http://`` or ``https://`` (e.g. ``http://127.0.0.1:5000/get_reward``).
            name: the logged component's name inside :class:`lit_rl.Rewards`.
            timeout: seconds to wait for the server in each request before trying again.
            retries: further tries after a timeout, a refused connection or an HTTP 429/5xx.
            backoff: seconds before the first retry, doubled before each next one.
            headers: extra HTTP headers (e.g. ``Authorization: Bearer ${REWARD_TOKEN}``); ``${NAME}`` reads the
                environment variable ``NAME`` at construction, so a secret stays out of the saved ``config.yaml``.
            batch_size: completions per request (default: all of a step's in one).
            label_column: the dataset column sent as ``labels`` (OpenRLHF's ground truth), e.g. ``answer``.
        """
        parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"RemoteReward url {url!r} is not an http:// or https:// address with a host (e.g. "
                             f"http://127.0.0.1:5000/get_reward)")
        if not isinstance(name, str) or not name:
            raise ValueError(f"RemoteReward name must be a non-empty string (got {name!r})")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"RemoteReward {name}: timeout must be a positive number of seconds (got {timeout!r})")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"RemoteReward {name}: retries must be an integer >= 0 (got {retries!r})")
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not 0 <= backoff < math.inf:
            raise ValueError(f"RemoteReward {name}: backoff must be a number of seconds >= 0 (got {backoff!r})")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"RemoteReward {name}: batch_size must be a positive number of completions, or unset "
                             f"for one request per step (got {batch_size!r})")
        if label_column is not None and (not isinstance(label_column, str) or not label_column):
            raise ValueError(f"RemoteReward {name}: label_column must be a column name, or unset (got "
                             f"{label_column!r})")
        headers = dict(headers or {})
        for key, value in headers.items():                              # values unnamed: they may be secrets
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f"RemoteReward {name}: header {key!r} must map a name to a string")
            unset = [var for var in ENV_VAR.findall(value) if var not in os.environ]
            if unset:
                raise ValueError(f"RemoteReward {name}: header {key!r} reads the environment variable {unset[0]}, "
                                 f"which is not set")
            headers[key] = ENV_VAR.sub(lambda m: os.environ[m.group(1)], value)
            if any(c in key + headers[key] for c in "\r\n"):
                raise ValueError(f"RemoteReward {name}: header {key!r} must fit on one line")
        self.url, self.name, self.timeout, self.retries, self.backoff = url, name, float(timeout), retries, float(backoff)
        self.batch_size, self.label_column = batch_size, label_column
        self._headers = headers                                         # private: kept out of repr and errors

    def __repr__(self) -> str:
        return f"RemoteReward(url={self.url!r}, name={self.name!r})"

    def check_rows(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        """Every row must have ``label_column``, so a missing label is named before training, not mid-run."""
        if self.label_column is None:
            return
        missing = [where for where, columns in rows if self.label_column not in columns]
        if missing:
            raise ValueError(f"reward {self.name}: label_column {self.label_column!r} is missing from {len(missing)} "
                             f"rows (first at {missing[0]}); add the column or set label_column to one that exists")

    # ------------------------------------------------------------------------------------------ scoring
    async def score(self, prompts: list[Prompt], completions: list[str], columns: Columns) -> list[Score | None]:
        if self.label_column is not None and self.label_column not in columns:
            raise ValueError(f"reward {self.name}: label_column {self.label_column!r} is not a dataset column (the "
                             f"columns are {sorted(columns)})")
        size = self.batch_size or max(1, len(completions))
        starts = list(range(0, len(completions), size))
        answers = await asyncio.gather(*(asyncio.to_thread(self.request, self.payload(
            prompts[s:s + size], completions[s:s + size], {k: v[s:s + size] for k, v in columns.items()}))
            for s in starts))
        scores: list[Score | None] = []
        for start, answer in zip(starts, answers):
            scores += self.read(answer, completions[start:start + size], start)
        return scores

    def payload(self, prompts: list[Prompt], completions: list[str], columns: Columns) -> bytes:
        """The JSON request of one batch (see the class docstring)."""
        query = [p + c if isinstance(p, str) else [*p, {"role": "assistant", "content": c}]
                 for p, c in zip(prompts, completions, strict=True)]
        body: dict[str, Any] = {"query": query, "prompts": prompts, "completions": completions}
        if self.label_column is not None:
            body["labels"] = columns[self.label_column]
        body["columns"] = columns
        try:
            return json.dumps(body, allow_nan=False).encode()
        except (TypeError, ValueError) as err:
            raise TypeError(f"reward {self.name}: the batch for {self.url} cannot be sent as JSON ({err}); every "
                            f"dataset column must hold JSON values (strings, numbers, lists, dicts, null)") from None

    def request(self, body: bytes) -> Any:
        """POST ``body`` and return the parsed JSON answer, retrying what the server may recover from."""
        who = f"reward {self.name}"
        text = fetch(self.url, body, who, self.timeout, self.retries, self.backoff, self._headers)
        return parse_json(text, self.url, who, '{"rewards": [...]}')

    def read(self, answer: Any, completions: list[str], start: int) -> list[Score | None]:
        """One :class:`Score` (or ``None``) per completion from one answer, or an error naming what is wrong;
        ``start`` is the batch's first sample in the step."""
        correct = None
        if isinstance(answer, dict):
            if "rewards" not in answer:
                raise ValueError(f"reward {self.name}: {self.url} answered a JSON object without 'rewards' (keys "
                                 f"{sorted(answer)[:10]}); the answer must be {{\"rewards\": [...]}}")
            rewards, correct = answer["rewards"], answer.get("correct")
        else:
            rewards = answer
        if not isinstance(rewards, list):
            raise ValueError(f"reward {self.name}: {self.url} answered rewards={str(rewards)[:200]}; rewards must be "
                             f"a list with one number (or null) per completion")
        for what, values in (("scores", rewards), ("correct values", correct)):
            if values is not None and (not isinstance(values, list) or len(values) != len(completions)):
                got = len(values) if isinstance(values, list) else type(values).__name__
                raise ValueError(f"reward {self.name}: {self.url} returned {got} {what} for the {len(completions)} "
                                 f"completions sent (samples {start} to {start + len(completions) - 1})")
        scores: list[Score | None] = []
        for j, value in enumerate(rewards):
            i, judged = start + j, None if correct is None else correct[j]
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"reward {self.name}: {self.url} returned {value!r} for sample {i} (completion "
                                 f"{completions[j][:200]!r}): a reward must be a number or null")
            if judged is not None and not isinstance(judged, bool):
                raise ValueError(f"reward {self.name}: {self.url} returned correct={judged!r} for sample {i} "
                                 f"(completion {completions[j][:200]!r}): it must be true, false or null")
            scores.append(None if value is None else Score(float(value), judged))
        return scores
