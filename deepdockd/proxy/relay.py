"""The relay: one request of a browser's (or curl's) to a service in a container, and its
answer back, streamed both ways; a WebSocket becomes two, pumped into each other.

The request goes on with its own path (the prefix included: Jupyter's ``base_url`` and
TensorBoard's ``--path_prefix`` name it), its own Host and Origin (Jupyter checks that they
agree), and its body streamed, whatever its size. What is deepdockd's stays here: the
bearer token that authenticated it and deepdockd's session cookie are taken out, and a
service cannot set deepdockd's cookie. Hop-by-hop headers are the relay's own, as HTTP says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from deepdockd.errors import BadGateway

log = logging.getLogger(__name__)

# RFC 9110 7.6.1: the headers of one connection, never passed on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Answered by deepdockd itself (aiohttp sends the 100 Continue before the handler runs), so
# the body is already on its way and the service must not be asked to wait for it.
ANSWERED_HERE = frozenset({"expect"})
# The handshake's own headers, which the relay's WebSocket client writes anew.
WEBSOCKET_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)
# The largest WebSocket message relayed (a notebook's output image is a few MiB).
MAX_MESSAGE = 64 * 1024 * 1024
# What the relay reads of an answer at once before it writes it on.
READ_BUFFER = 1024 * 1024


class ServiceUnreachable(BadGateway):
    code = "service_unreachable"


class Relay:
    """One client session for every relayed request: its connections to the services are
    kept alive between requests, and bodies pass as they came (no decompression)."""

    def __init__(self, cookie_name: str) -> None:
        self._cookie_name = cookie_name
        self._client: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            cookie_jar=aiohttp.DummyCookieJar(),
            read_bufsize=READ_BUFFER,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def client(self) -> aiohttp.ClientSession:
        assert self._client is not None, "Relay.open() first"
        return self._client

    async def http(
        self, request: web.Request, upstream: URL, *, keep_authorization: bool, what: str
    ) -> web.StreamResponse:
        """``what`` names the service in an error ("port 8888 of container 'nb'")."""
        headers = self._request_headers(request, keep_authorization=keep_authorization)
        try:
            answer = await self.client.request(
                request.method,
                upstream,
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise _unreachable(what, exc) from None
        async with answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason)
            response.headers.extend(self._answer_headers(answer.headers))
            if answer.content_length is not None:
                response.content_length = answer.content_length
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        return response

    async def websocket(
        self, request: web.Request, upstream: URL, *, keep_authorization: bool, what: str
    ) -> web.WebSocketResponse:
        """The service's WebSocket first (with the subprotocols the browser offered), then the
        browser's, speaking the subprotocol the service chose; then both pumped until one
        side closes."""
        headers = self._request_headers(request, keep_authorization=keep_authorization)
        for name in WEBSOCKET_HANDSHAKE:
            headers.popall(name, None)
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        try:
            service = await self.client.ws_connect(
                upstream.with_scheme("ws"),
                protocols=[p for p in offered if p],
                headers=headers,
                max_msg_size=MAX_MESSAGE,
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise ServiceUnreachable(
                f"{what} refused the WebSocket (HTTP {exc.status})", details={"status": exc.status}
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _unreachable(what, exc) from None
        async with service:
            browser = web.WebSocketResponse(
                protocols=(service.protocol,) if service.protocol else (),
                max_msg_size=MAX_MESSAGE,
            )
            await browser.prepare(request)
            await _pump_both(browser, service)
        return browser

    def _request_headers(
        self, request: web.Request, *, keep_authorization: bool
    ) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        named_hops = _connection_tokens(request.headers)
        for name, value in request.headers.items():
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in named_hops or lower in ANSWERED_HERE:
                continue
            if lower == "authorization" and not keep_authorization:
                continue  # deepdockd's token: never the service's to see
            if lower == "cookie":
                value = _without_cookie(value, self._cookie_name)
                if not value:
                    continue
            headers.add(name, value)
        peer = request.remote or ""
        forwarded_for = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{forwarded_for}, {peer}" if forwarded_for else peer
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        return headers

    def _answer_headers(self, answer: CIMultiDictProxy[str]) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        named_hops = _connection_tokens(answer)
        for name, value in answer.items():
            lower = name.lower()
            if lower in HOP_BY_HOP or lower in named_hops or lower == "content-length":
                continue
            if lower == "set-cookie" and _cookie_name_of(value) == self._cookie_name:
                continue  # a service may not set (or toss) deepdockd's session cookie
            headers.add(name, value)
        return headers


async def _pump_both(
    browser: web.WebSocketResponse, service: aiohttp.ClientWebSocketResponse
) -> None:
    tasks = [
        asyncio.create_task(_pump(browser, service)),
        asyncio.create_task(_pump(service, browser)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, RuntimeError):
                await task
        code = service.close_code or browser.close_code or aiohttp.WSCloseCode.OK
        with contextlib.suppress(ConnectionError, RuntimeError):
            await browser.close(code=code)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await service.close(code=code)


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    """Every message of ``source`` to ``sink`` until ``source`` closes (pings and pongs are
    each side's own: both answer them)."""
    async for message in source:
        if message.type == aiohttp.WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type == aiohttp.WSMsgType.ERROR:
            break


def _connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    """The headers that ``Connection`` names as this connection's own."""
    tokens: set[str] = set()
    for value in headers.getall("Connection", []):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def _without_cookie(header: str, name: str) -> str:
    """A Cookie header without ``name`` (kept as the browser wrote the rest)."""
    kept = [part for part in header.split(";") if part.strip().partition("=")[0] != name]
    return ";".join(kept).strip(" ;")


def _cookie_name_of(set_cookie: str) -> str:
    return set_cookie.partition("=")[0].strip()


def _unreachable(what: str, exc: BaseException) -> ServiceUnreachable:
    reason = _reason(exc)
    log.info("the proxy could not reach %s: %r", what, exc)
    return ServiceUnreachable(f"nothing answers on {what}: {reason}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "it did not answer in time"
    # Docker's port publisher (where the proxy goes through it) takes the connection and
    # closes it when nothing listens in the container: the same cause as a refusal.
    if isinstance(exc, aiohttp.ClientConnectorError):
        what = "connection refused"
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        what = "the connection closed without an answer"
    else:
        return "the connection failed"
    return (
        f"{what} (is the service up, and listening on 0.0.0.0 rather than 127.0.0.1 inside "
        "the container?)"
    )
