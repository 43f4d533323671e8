"""A small web service for the proxy's tests, run inside a test container (the rig's
DEBIAN_WEBAPP_IMAGE) with the Python of the image alone: an HTTP page whose script opens a
WebSocket back to it and shows what the echo said, a WebSocket echo, the request's headers as
JSON, and a download of N bytes. It answers under any path, as Jupyter does under its
``base_url``: only the last part of the path says what is asked.

    python3 web_app.py PORT
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import sys
from urllib.parse import parse_qs, urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455's
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>test service</title></head>
<body><h1 id="title">test service</h1><p id="echo">waiting</p>
<script>
const ws = new WebSocket(location.href.replace(/^http/, "ws").replace(/[^/]*$/, "ws"));
ws.onopen = () => ws.send("hello through the proxy");
ws.onmessage = (event) => { document.getElementById("echo").textContent = "echo: " + event.data; };
ws.onerror = () => { document.getElementById("echo").textContent = "websocket failed"; };
</script></body></html>
"""


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            headers: dict[str, list[str]] = {}
            for line in head.decode("latin-1").split("\r\n")[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers.setdefault(name.strip().lower(), []).append(value.strip())
            length = int(headers.get("content-length", ["0"])[0])
            body = await reader.readexactly(length) if length else b""
            url = urlsplit(target)
            last = url.path.rsplit("/", 1)[-1]
            if headers.get("upgrade", [""])[0].lower() == "websocket":
                await websocket_echo(reader, writer, headers)
                return
            if last == "headers":
                answer("200 OK", "application/json", json.dumps(headers).encode(), writer)
            elif last == "download":
                size = int(parse_qs(url.query).get("size", ["1048576"])[0])
                answer("200 OK", "application/octet-stream", b"x" * size, writer)
            elif last == "setcookie":  # each ?name=… set for the path /
                names = parse_qs(url.query).get("name", [])
                cookies = "".join(f"Set-Cookie: {n}=from-the-service; Path=/\r\n" for n in names)
                answer("200 OK", "text/plain", b"set", writer, extra=cookies)
            elif last == "echo":
                reply = {"method": method, "target": target, "body": body.decode()}
                answer("200 OK", "application/json", json.dumps(reply).encode(), writer)
            else:
                page = PAGE.encode()
                answer("200 OK", "text/html; charset=utf-8", page, writer, head=method == "HEAD")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def answer(
    status: str,
    content_type: str,
    body: bytes,
    writer: asyncio.StreamWriter,
    *,
    extra: str = "",
    head: bool = False,
) -> None:
    """The answer; to a HEAD, its header alone (the length of the body it would have)."""
    writer.write(
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + (b"" if head else body)
    )


async def websocket_echo(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, headers: dict[str, list[str]]
) -> None:
    key = headers["sec-websocket-key"][0].encode()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    protocol = headers.get("sec-websocket-protocol", [""])[0].split(",")[0].strip()
    writer.write(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept}\r\n"
            + (f"Sec-WebSocket-Protocol: {protocol}\r\n" if protocol else "")
            + "\r\n"
        ).encode()
    )
    while True:
        first, second = await reader.readexactly(2)
        opcode, length = first & 0x0F, second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        mask = await reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(length)))
        if opcode == 0x8:  # close: answered with the same code
            writer.write(frame(0x8, data[:2]))
            await writer.drain()
            return
        if opcode == 0x9:  # ping
            writer.write(frame(0xA, data))
        elif opcode in (0x1, 0x2):
            writer.write(frame(opcode, data))
        await writer.drain()


def frame(opcode: int, data: bytes) -> bytes:
    if len(data) < 126:
        size = bytes([len(data)])
    elif len(data) < 1 << 16:
        size = bytes([126]) + struct.pack("!H", len(data))
    else:
        size = bytes([127]) + struct.pack("!Q", len(data))
    return bytes([0x80 | opcode]) + size + data


async def main(port: int) -> None:
    server = await asyncio.start_server(serve, "0.0.0.0", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
