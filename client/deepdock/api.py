"""One deepdockd over HTTP (httpx). Every failure is an :class:`ApiFailure` whose ``str()`` is
the one line a person reads: the API's own message, or why the server could not be reached."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from deepdock.settings import Server

NDJSON = "application/x-ndjson"
# Answers come fast; a create waits for the container's SSH server, a pull for the registry.
# A server that does not even accept the connection is given up on soon (--all, --watch).
TIMEOUT = httpx.Timeout(30.0, connect=5.0, read=600.0)
# Following a log: a quiet container may write nothing for hours.
NO_READ_DEADLINE = httpx.Timeout(30.0, connect=5.0, read=None)


class ApiFailure(Exception):
    """An error answer (``status`` and ``code`` set) or no answer at all (both None)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class Api:
    def __init__(self, server: Server, *, timeout: httpx.Timeout = TIMEOUT) -> None:
        self.server = server
        if server.token is not None and not server.token.isascii():
            raise ApiFailure(
                f"the token for {server.url} has characters no token has: log in again"
            )
        headers = {"Authorization": f"Bearer {server.token}"} if server.token else {}
        # On the server itself: the daemon's local socket, where it knows who is calling.
        transport = httpx.HTTPTransport(uds=server.socket) if server.socket else None
        try:
            self._client = httpx.Client(
                base_url=server.url, headers=headers, timeout=timeout, transport=transport
            )
        except httpx.InvalidURL as exc:
            raise ApiFailure(f"{server.url!r} is not a URL deepdock can use: {exc}") from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=_present(params))

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, json=body)

    def delete(self, path: str, **params: Any) -> Any:
        return self.call("DELETE", path, params=_present(params))

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        with self._reaching():
            response = self._client.request(method, path, **kwargs)
        _raise_for(response)
        return self._json(response.text)

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """The answer, to read as it comes; an error answer raises before."""
        with self._reaching(), self._client.stream(method, path, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for(response)
            yield response

    def lines(self, method: str, path: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """An NDJSON answer, one object a line."""
        headers = {"Accept": NDJSON}
        with self.stream(method, path, headers=headers, **kwargs) as response, self._reaching():
            for line in response.iter_lines():
                if line.strip():
                    yield self._json(line)

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException:
            raise ApiFailure(f"{self._where()} did not answer in time") from None
        except httpx.TransportError as exc:
            raise ApiFailure(f"cannot reach {self._where()}: {_reason(exc)}") from None
        except httpx.HTTPError as exc:  # an invalid URL or header, say
            raise ApiFailure(f"{self._where()}: {exc}") from None

    def _json(self, text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            raise ApiFailure(
                f"{self._where()} answered with something that is not JSON: is it a deepdockd?"
            ) from None

    def _where(self) -> str:
        if self.server.socket is not None:
            return f"deepdockd at {self.server.socket}"
        name = "" if self.server.name == "env" else f"{self.server.name} "
        return f"deepdockd {name}at {self.server.url}"


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), str(error["code"])
    except (ValueError, KeyError, TypeError):
        # Not deepdockd's error (a proxy's page, say): its status, and plain text if short.
        text = " ".join(response.text.split())
        plain = response.headers.get("content-type", "").startswith("text/plain")
        message = (
            text[:200]
            if plain and text
            else f"HTTP {response.status_code} {response.reason_phrase}"
        )
        code = None
    raise ApiFailure(message, status=response.status_code, code=code)


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused (is deepdockd running there?)"
    return text


def _present(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None and v is not False}
