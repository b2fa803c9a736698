"""A small HTTP/1.1 server for pushed readings, on h11 (a sans-I/O parser); never imports gateway.

Why h11 rather than hand-written parsing: the endpoint faces whatever the network sends, and
HTTP framing (Content-Length against Transfer-Encoding, chunked bodies, pipelining, header
limits) is where hand-written servers go wrong; h11 is a few hundred KB of pure Python with no
dependencies. Why not a framework: one POST route does not need one, and the gateway's memory
budget is small.

Every request is bounded: header block (``max_header``), body (``max_body``: a declared length
above it is refused with 413 before reading it), time per request (``timeout``) and
connections at once (``max_connections``: beyond them 503). Protocol errors get a 400 and the
connection is closed. The handler is called with the whole request and returns the response;
it must not raise (a bug in it answers 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

import h11

log = logging.getLogger(__name__)
CLOSE_WAIT = 5.0  # seconds close() waits for cancelled connections to end


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str  # path and query as sent
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    peer: str


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def error(cls, status: int, message: str, *headers: tuple[str, str]) -> Response:
        """A JSON error body a device's developer can read: {"error": "..."}."""
        return cls(status, json.dumps({"error": message}).encode() + b"\n", headers=headers)


Handler = Callable[[Request], Response]
Refusal = Callable[[int], None]  # told the status of every refusal the server makes itself


class HttpServer:
    """Serves ``handler`` on ``host:port`` until closed."""

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        max_body: int = 64 * 1024,
        max_header: int = 16 * 1024,
        timeout: float = 10.0,
        max_connections: int = 64,
        on_refusal: Refusal | None = None,
    ) -> None:
        self.handler = handler
        self.host, self.requested_port = host, port
        self.max_body, self.max_header = max_body, max_header
        self.timeout, self.max_connections = timeout, max_connections
        self.on_refusal = on_refusal or (lambda status: None)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        """Listen; OSError (address in use, permission) propagates to the caller."""
        self._server = await asyncio.start_server(self._connection, self.host, self.requested_port, reuse_address=True)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT)  # bounded: a stop never hangs on a client
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        try:
            if len(self._tasks) > self.max_connections:
                self.on_refusal(503)
                await self._send_raw(writer, Response.error(503, "too many connections; try again later"))
                return
            await self._serve(reader, writer, f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer))
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client went away or stalled: nothing to answer
        except asyncio.CancelledError:
            # our own close() cancelled the connection; ending normally keeps asyncio's stream
            # callback (which asks a finished handler for its exception) from logging a traceback
            # on Python 3.11, where asking a cancelled task raises
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_header)
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    response = await self._one_request(conn, reader, writer, peer)
            except h11.RemoteProtocolError as e:
                self.on_refusal(400)
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._send(conn, writer, Response.error(e.error_status_hint, f"bad HTTP request: {e}"))
                return
            except TimeoutError:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and conn.their_state is not h11.IDLE:
                    self.on_refusal(408)
                    await self._send(conn, writer, Response.error(408, "request not complete in time"))
                return
            if response is None:  # the client closed the connection between requests
                return
            await self._send(conn, writer, response)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is not h11.DONE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _one_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> Response | None:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)  # b"" means the peer closed
                continue
            if isinstance(event, h11.ConnectionClosed):
                if request is None:
                    return None
                raise h11.RemoteProtocolError("connection closed in the middle of a request")
            if isinstance(event, h11.Request):
                request = event
                length = _header(event.headers, b"content-length")
                if length is not None and length.isdigit() and int(length) > self.max_body:
                    self.on_refusal(413)
                    return _closing(Response.error(413, f"body of {length} bytes; at most {self.max_body}"))
                if conn.they_are_waiting_for_100_continue:  # the declared length is acceptable: go on
                    writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_body:
                    self.on_refusal(413)
                    return _closing(Response.error(413, f"body larger than {self.max_body} bytes"))
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                headers: dict[str, str] = {}
                for name, value in request.headers:
                    key = name.decode("latin-1").lower()
                    text = value.decode("latin-1")
                    headers[key] = f"{headers[key]}, {text}" if key in headers else text
                req = Request(
                    request.method.decode("latin-1"), request.target.decode("latin-1"), headers, bytes(body), peer
                )
                try:
                    return self.handler(req)
                except Exception:
                    log.exception("push: handling %s %s failed", req.method, req.target[:100])
                    return Response.error(500, "internal error")

    async def _send(self, conn: h11.Connection, writer: asyncio.StreamWriter, response: Response) -> None:
        headers = [
            ("content-type", response.content_type),
            ("content-length", str(len(response.body))),
            *response.headers,
        ]
        try:
            parts = [
                conn.send(h11.Response(status_code=response.status, headers=headers)),
                conn.send(h11.Data(data=response.body)),
                conn.send(h11.EndOfMessage()),
            ]
        except h11.LocalProtocolError:
            return
        writer.write(b"".join(p or b"" for p in parts))
        await writer.drain()

    async def _send_raw(self, writer: asyncio.StreamWriter, response: Response) -> None:
        """A response before reading any request (too many connections)."""
        head = (
            f"HTTP/1.1 {response.status} Service Unavailable\r\ncontent-type: {response.content_type}\r\n"
            f"content-length: {len(response.body)}\r\nconnection: close\r\n\r\n"
        )
        writer.write(head.encode() + response.body)
        await writer.drain()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1").strip().lower()
    return None


def _closing(response: Response) -> Response:
    """The response, sent with Connection: close (the rest of the request is not read)."""
    return Response(response.status, response.body, response.content_type, (*response.headers, ("connection", "close")))
