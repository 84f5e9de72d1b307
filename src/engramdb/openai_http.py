"""A small HTTP client for OpenAI-compatible endpoints (OpenAI, Ollama, vLLM, TEI).

Shared by the ``openai`` embedder and the chat extractor so that both resolve
API keys, retry, time out and report failures the same way.

Secrets: the API key lives only in the client's default headers. It is never
logged, never part of ``repr`` and is scrubbed from any server text that ends
up in an error message (some servers echo the request back on errors).
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import random
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from engramdb.errors import DeadlineExceeded, InvalidArgument, UpstreamError

log = logging.getLogger("engramdb.upstream")

# 408 and 409-style conflicts are not in here on purpose: only statuses that
# say "the same request may succeed later" are retried.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Errors where the request certainly or very probably never reached the
# server's handler, so repeating it cannot do work twice. RemoteProtocolError
# covers a pooled keep-alive connection that the server closed meanwhile.
RETRY_EXCEPTIONS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.RemoteProtocolError,
)
_SNIPPET = 300


def resolve_api_key(api_key_env: str | None, api_key_file: str | None) -> str | None:
    """Read the API key from an environment variable or a file, or ``None`` when neither is configured.

    Error messages name where the key was looked for, never the key itself.
    """
    if api_key_env and api_key_file:
        raise InvalidArgument("set only one of api_key_env and api_key_file, not both")
    if api_key_env:
        value = os.environ.get(api_key_env, "").strip()
        if not value:
            raise InvalidArgument(f"the environment variable {api_key_env!r} (api_key_env) is not set or is empty")
        return _check_key(value, f"the environment variable {api_key_env!r}")
    if api_key_file:
        path = Path(api_key_file).expanduser()
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise InvalidArgument(f"cannot read api_key_file {str(path)!r}: {exc.strerror or exc}") from None
        if not value:
            raise InvalidArgument(f"api_key_file {str(path)!r} is empty")
        return _check_key(value, f"api_key_file {str(path)!r}")
    # Local servers (Ollama, TEI, vLLM without --api-key) need no key.
    return None


def _check_key(key: str, source: str) -> str:
    # Checked here because httpx would fail later, at the first request, with
    # an encoding error far from the cause.
    if not key.isascii() or not key.isprintable() or any(ch.isspace() for ch in key):
        raise InvalidArgument(f"the API key in {source} contains spaces or characters not allowed in an HTTP header")
    return key


def endpoint_url(base_url: str, path: str) -> str:
    """Join ``base_url`` and an API path such as ``"embeddings"``.

    Both spellings users copy from provider docs work: ``http://host:11434``
    and ``https://api.openai.com/v1`` (the OpenAI SDK's convention).
    """
    base = base_url.strip().rstrip("/")
    try:
        url = httpx.URL(base)
    except Exception:  # httpx raises several types for bad URLs
        raise InvalidArgument(f"base_url {base_url!r} is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidArgument(f"base_url must be an http:// or https:// URL with a host, got {public_url(base)!r}")
    if base.endswith("/v1"):
        return f"{base}/{path}"
    return f"{base}/v1/{path}"


def public_url(url: str) -> str:
    """``url`` without user:password, for messages."""
    try:
        parsed = httpx.URL(url)
    except Exception:
        return "<invalid url>"
    if parsed.userinfo:
        parsed = parsed.copy_with(username=None, password=None)
    return str(parsed)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        # RFC 9110 says integer seconds; some servers send fractions.
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAICompatClient:
    """POSTs JSON to one OpenAI-compatible server with retries, and returns the decoded answer.

    ``timeout_seconds`` bounds each attempt (connect, send, wait for the
    answer); a timed-out attempt is not retried, because a server too slow
    once is usually too slow again and retrying would multiply the wait.
    Connect errors, 408, 429 and 5xx are retried up to ``max_retries`` times
    with exponential backoff and jitter, or after ``Retry-After`` when the
    server sends one (up to ``max_retry_after`` seconds).
    """

    def __init__(
        self,
        base_url: str,
        *,
        what: str,
        api_key_env: str | None = None,
        api_key_file: str | None = None,
        timeout_seconds: float = 30.0,
        max_retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        if timeout_seconds <= 0:
            raise InvalidArgument(f"timeout_seconds must be > 0, got {timeout_seconds}")
        if max_retries < 0:
            raise InvalidArgument(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url
        self.what = what
        self.timeout_seconds = float(timeout_seconds)
        self.max_retries = int(max_retries)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self._key_source = (
            f"the environment variable {api_key_env!r}"
            if api_key_env
            else f"the file {api_key_file!r}"
            if api_key_file
            else "no API key (none configured)"
        )
        endpoint_url(base_url, "x")  # validate early: a typo should fail at configuration time
        key = resolve_api_key(api_key_env, api_key_file)
        self._secrets = tuple(s for s in (key,) if s)
        headers = {"Accept": "application/json", "User-Agent": "engramdb"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        # One client per endpoint: it keeps a pool of keep-alive connections,
        # which saves a TCP (and TLS) handshake per batch.
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout_seconds),
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"<OpenAICompatClient {self.what} {public_url(self.base_url)}>"

    def close(self) -> None:
        """Close pooled connections."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def scrub(self, text: str) -> str:
        """``text`` with every secret replaced by ``***``."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _backoff(self, attempt: int) -> float:
        # "Equal jitter": half fixed, half random, so clients that failed
        # together spread out but every wait still grows exponentially.
        delay = min(self.backoff_max, self.backoff_base * (2**attempt))
        return delay / 2 + random.uniform(0, delay / 2)

    def _server_message(self, response: httpx.Response) -> str:
        """The server's own error text, shortened and scrubbed, for messages."""
        text = ""
        try:
            body = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if isinstance(body, dict):
            err = body.get("error")
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                text = err["message"]
            elif isinstance(err, str):
                text = err
            elif isinstance(body.get("message"), str):
                text = body["message"]
        if not text:
            text = response.text
        text = " ".join(self.scrub(text).split())
        return text[:_SNIPPET] + ("..." if len(text) > _SNIPPET else "")

    def post_json(self, path: str, payload: dict[str, Any]) -> Any:
        """POST ``payload`` to ``<base_url>/v1/<path>`` and return the decoded JSON answer.

        Raises :class:`UpstreamError` when the server fails or answers with
        something that is not JSON, :class:`DeadlineExceeded` when an attempt
        times out.
        """
        url = endpoint_url(self.base_url, path)
        shown = public_url(url)
        attempt = 0
        while True:
            try:
                response = self._client.post(url, json=payload)
            except RETRY_EXCEPTIONS as exc:
                if attempt < self.max_retries:
                    delay = self._backoff(attempt)
                    log.warning(
                        "%s at %s: %s, retry %d/%d in %.2fs",
                        self.what,
                        shown,
                        type(exc).__name__,
                        attempt + 1,
                        self.max_retries,
                        delay,
                    )
                    time.sleep(delay)
                    attempt += 1
                    continue
                raise UpstreamError(
                    f"cannot reach the {self.what} at {shown} ({type(exc).__name__}) after {attempt + 1} attempt(s); "
                    "check base_url and that the server is running",
                    details={"url": shown, "attempts": attempt + 1},
                ) from exc
            except httpx.TimeoutException as exc:
                raise DeadlineExceeded(
                    f"the {self.what} at {shown} did not answer within {self.timeout_seconds:g}s "
                    "(timeout_seconds); raise the timeout or send smaller batches",
                    details={"url": shown, "timeout_seconds": self.timeout_seconds},
                ) from exc
            except httpx.HTTPError as exc:
                raise UpstreamError(
                    f"request to the {self.what} at {shown} failed: {type(exc).__name__}: {self.scrub(str(exc))}",
                    details={"url": shown},
                ) from exc

            status = response.status_code
            if status in RETRY_STATUSES:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                server_msg = self._server_message(response)
                if retry_after is not None and retry_after > self.max_retry_after:
                    raise UpstreamError(
                        f"the {self.what} at {shown} answered HTTP {status} and asks to retry after "
                        f"{retry_after:.0f}s, longer than EngramDB waits ({self.max_retry_after:.0f}s): {server_msg}",
                        details={"url": shown, "status": status, "retry_after": retry_after},
                    )
                if attempt < self.max_retries:
                    delay = retry_after if retry_after is not None else self._backoff(attempt)
                    log.warning(
                        "%s at %s: HTTP %d, retry %d/%d in %.2fs",
                        self.what,
                        shown,
                        status,
                        attempt + 1,
                        self.max_retries,
                        delay,
                    )
                    time.sleep(delay)
                    attempt += 1
                    continue
                details: dict[str, Any] = {"url": shown, "status": status, "attempts": attempt + 1}
                if retry_after is not None:
                    details["retry_after"] = retry_after
                raise UpstreamError(
                    f"the {self.what} at {shown} answered HTTP {status} on all {attempt + 1} attempt(s): {server_msg}",
                    details=details,
                )
            if status in (401, 403):
                raise UpstreamError(
                    f"the {self.what} at {shown} refused the credentials (HTTP {status}); "
                    f"the key comes from {self._key_source}: {self._server_message(response)}",
                    details={"url": shown, "status": status},
                )
            if status >= 300:
                # Other 4xx: the request itself is wrong (unknown model, input
                # too long); repeating it cannot help.
                server_msg = self._server_message(response)
                raise UpstreamError(
                    f"the {self.what} at {shown} rejected the request (HTTP {status}): {server_msg}",
                    details={"url": shown, "status": status},
                )
            try:
                return response.json()
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise UpstreamError(
                    f"the {self.what} at {shown} answered HTTP {status} with a body that is not JSON: "
                    f"{self._server_message(response)!r}",
                    details={"url": shown, "status": status},
                ) from None
