"""A TCP relay in front of a deepdockd process that holds every answer passing through it to
the strict spec (tests/support/spec.py), for clients that speak HTTP themselves: the
``deepdock`` client, run as a person runs it, in a process of its own. ``exchange_problems``
reads the bytes of a raw socket's exchange the same way, for the tests that speak HTTP by hand.

The relay passes the bytes on untouched, both ways and as they come (a pull's progress and a
log follow stream through it as they would without it), and keeps a copy of each
connection's two directions. When it closes, each copy is read back as HTTP/1.1 (h11): the
requests, and the answer to each, checked with ``answer_problem``. An answer whose connection
ended before it did (a follow the client left) is checked as a stream the client left.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11

from tests.support.relays import Pipe, copy, in_thread, tcp_relay
from tests.support.spec import answer_problem


@dataclass
class _Connection:
    sent: bytearray = field(default_factory=bytearray)  # the client's requests
    received: bytearray = field(default_factory=bytearray)  # the daemon's answers


@dataclass
class CheckingRelay:
    url: str  # the relay's, to give the client in place of the daemon's
    connections: list[_Connection]
    answers_checked: int = 0

    def problems(self) -> list[str]:
        """What was wrong with each answer that passed, in the order they came."""
        found: list[str] = []
        for connection in self.connections:
            problems, checked = _problems(self.url, connection)
            found += problems
            self.answers_checked += checked
        return found


def exchange_problems(base: str, sent: bytes, received: bytes) -> list[str]:
    """What was wrong with each answer of one HTTP/1.1 connection, read from its bytes as
    they went (``sent``: the requests; ``received``: the answers, as far as they came): for
    tests that speak HTTP by hand on a raw socket. ``base``: the daemon's URL."""
    return _problems(base, _Connection(bytearray(sent), bytearray(received)))[0]


def _problems(base: str, connection: _Connection) -> tuple[list[str], int]:
    found: list[str] = []
    checked = 0
    for method, target, headers, answer in _exchanges(connection):
        status, answer_headers, body, complete = answer
        checked += 1
        problem = answer_problem(
            method, base + target, status, answer_headers, body,
            request_headers=headers, complete=complete,
        )  # fmt: skip
        if problem:
            found.append(f"{method} {target} -> {status}: {problem}")
    return found, checked


@contextlib.contextmanager
def checking_relay(to: str) -> Iterator[CheckingRelay]:
    """A relay on a free loopback port to the daemon at ``to`` (its base URL). Yields it; on
    leaving, every answer that passed is checked, and any outside the spec fails."""
    target = urlsplit(to)
    connections: list[_Connection] = []

    def pipes() -> tuple[Pipe, Pipe]:
        connection = _Connection()
        connections.append(connection)

        def keeping(into: bytearray) -> Pipe:
            async def kept(data: bytes) -> None:
                into.extend(data)

            async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await copy(reader, writer, each=kept)

            return pipe

        return keeping(connection.sent), keeping(connection.received)

    relayed = tcp_relay(target.hostname or "127.0.0.1", target.port or 80, pipes)
    with in_thread(relayed, "checking-relay") as address:
        relay = CheckingRelay(f"http://{address}", connections)
        yield relay
    problems = relay.problems()
    assert not problems, "answers outside openapi.yaml through the relay:\n" + "\n".join(problems)


_Answer = tuple[int, dict[str, str], bytes, bool]  # status, headers, body, whole


def _exchanges(
    connection: _Connection,
) -> Iterator[tuple[str, str, dict[str, str], _Answer]]:
    """Each request of the connection and the answer to it (as far as it came)."""
    requests = h11.Connection(h11.SERVER)
    requests.receive_data(bytes(connection.sent))
    requests.receive_data(b"")
    answers = h11.Connection(h11.CLIENT)
    answers.receive_data(bytes(connection.received))
    answers.receive_data(b"")
    while True:
        request, body = _next_message(requests)
        if request is None:
            return
        assert isinstance(request, h11.Request)
        # The answers' parser must see the request go, to know where each answer ends.
        answers.send(request)
        if body:
            answers.send(h11.Data(data=body))
        answers.send(h11.EndOfMessage())
        answer, answer_body = _next_message(answers)
        if not isinstance(answer, h11.Response):
            return  # no answer came (the client or the daemon left first)
        whole = answers.their_state is h11.DONE
        method, target = request.method.decode(), request.target.decode()
        headers = {_title(k): v.decode() for k, v in request.headers}
        answer_headers = {_title(k): v.decode() for k, v in answer.headers}
        yield method, target, headers, (answer.status_code, answer_headers, answer_body, whole)
        if not whole or answers.our_state is not h11.DONE:
            return
        # Next request of the keep-alive connection: the requests' parser "answers" this one.
        requests.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
        requests.send(h11.EndOfMessage())
        if requests.our_state is not h11.DONE or requests.their_state is not h11.DONE:
            return
        requests.start_next_cycle()
        answers.start_next_cycle()


def _next_message(parser: h11.Connection) -> tuple[h11.Request | h11.Response | None, bytes]:
    """The next request or (final) answer, and as much of its body as came."""
    head: h11.Request | h11.Response | None = None
    body = bytearray()
    while True:
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError:
            return head, bytes(body)  # cut short: what came
        if event in (h11.NEED_DATA, h11.PAUSED) or isinstance(
            event, h11.ConnectionClosed | h11.EndOfMessage
        ):
            return head, bytes(body)
        if isinstance(event, h11.Request | h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body.extend(event.data)


def _title(name: bytes) -> str:
    return "-".join(part.capitalize() for part in name.decode().split("-"))
