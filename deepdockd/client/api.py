"""One deepdockd over HTTP (httpx). Every failure is an :class:`ApiFailure` whose ``str()`` is
the one line a person reads: the API's own message, or why the server could not be reached."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from deepdockd.client.settings import Server

NDJSON = "application/x-ndjson"
# Answers come fast; a create waits for the container's SSH server, a pull for the registry.
TIMEOUT = httpx.Timeout(30.0, read=600.0)


class ApiFailure(Exception):
    """An error answer (``status`` and ``code`` set) or no answer at all (both None)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class Api:
    def __init__(self, server: Server, *, timeout: httpx.Timeout = TIMEOUT) -> None:
        self.server = server
        headers = {"Authorization": f"Bearer {server.token}"} if server.token else {}
        self._client = httpx.Client(base_url=server.url, headers=headers, timeout=timeout)

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
        return response.json()

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
                    yield json.loads(line)

    @contextmanager
    def _reaching(self) -> Iterator[None]:
        try:
            yield
        except httpx.TimeoutException:
            raise ApiFailure(f"{self._where()} did not answer in time") from None
        except httpx.TransportError as exc:
            raise ApiFailure(f"cannot reach {self._where()}: {_reason(exc)}") from None

    def _where(self) -> str:
        name = "" if self.server.name == "env" else f"{self.server.name} "
        return f"deepdockd {name}at {self.server.url}"


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json()["error"]
        message, code = str(error["message"]), str(error["code"])
    except (ValueError, KeyError, TypeError):
        message, code = response.text.strip()[:200] or response.reason_phrase, None
    raise ApiFailure(message, status=response.status_code, code=code)


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused (is deepdockd running there?)"
    return text


def _present(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None and v is not False}
