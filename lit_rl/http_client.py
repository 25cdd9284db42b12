"""JSON over HTTP with time limits and retries: what ``RemoteReward`` and ``VLLMServerEngine`` share.

Standard library only (``urllib``), so talking to a server adds no dependency. A server's trouble (no answer in
time, a refused or dropped connection, HTTP 429 or 5xx) is retried after ``backoff``, ``2 * backoff``, ...
seconds; the request's own fault (another HTTP 4xx, a redirect) is not, and neither is an answer that is not JSON.
Every failure is one paragraph that starts with who asked (``reward remote``, ``vLLM server``) and names the URL.
"""

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any

from lit_rl.errors import BadServerAnswer, ServerUnavailable

RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})               # the server's trouble, not the request's


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib would resend ``headers`` (an Authorization) to wherever they point."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _body(err: urllib.error.HTTPError) -> str:
    """The first 200 characters of an error answer's body ('' where it cannot be read)."""
    try:
        return err.read()[:200].decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return ""


def fetch(url: str, body: bytes | None, who: str, timeout: float, retries: int, backoff: float,
          headers: dict[str, str] | None = None) -> bytes:
    """The answer's bytes to a POST of ``body`` (a GET when ``body`` is None). ``timeout`` bounds each wait for
    the server (connecting, each read); with a non-streaming answer that is the wait for the whole answer.
    Raises :class:`~lit_rl.errors.ServerUnavailable` (a ``RuntimeError``) when no try succeeds."""
    headers = {**(headers or {}), "Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    tries, failure, status = retries + 1, "", None
    for attempt in range(tries):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            request = urllib.request.Request(url, body, headers, method="GET" if body is None else "POST")
            with _OPENER.open(request, timeout=timeout) as response:
                return response.read()
        except urllib.error.HTTPError as err:
            status, said = err.code, _body(err)
            where = f"{url} answered HTTP {status} ({err.reason})"
            if status not in RETRIED_STATUSES:
                moved = f"; redirects are not followed: set url to {err.headers.get('Location')}" \
                    if 300 <= status < 400 else ""
                raise ServerUnavailable(f"{who}: {where}, not retried: {said!r}{moved}", status) from None
            failure = f"{where}: {said!r}"
        except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as err:
            status = None
            reason = err.reason if isinstance(err, urllib.error.URLError) else err
            if isinstance(reason, TimeoutError):
                failure = f"{url} did not answer within timeout={timeout:g} s"
            else:
                failure = f"cannot reach {url} ({type(reason).__name__}: {reason})"
    raise ServerUnavailable(f"{who}: {failure}, in {tries} {'try' if tries == 1 else 'tries'} (retries={retries}); "
                            f"check the server, or raise timeout or retries", status)


def parse_json(text: bytes, url: str, who: str, expected: str) -> Any:
    """``text`` parsed as JSON, or :class:`~lit_rl.errors.BadServerAnswer` (a ``ValueError``) saying what came
    instead and what was ``expected``."""
    try:
        return json.loads(text)
    except ValueError:
        raise BadServerAnswer(f"{who}: {url} answered with something that is not JSON "
                              f"({text[:200].decode(errors='replace')!r}); the answer must be {expected}") from None
