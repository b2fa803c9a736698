"""LLRP reader emulator for drivers/rfid: a TCP server speaking the driver's LLRP subset.

It behaves like a UHF reader (Impinj/Zebra class) as far as that subset goes: it announces each
connection with a READER_EVENT_NOTIFICATION, answers SET_READER_CONFIG (KeepaliveSpec),
DELETE/ADD/ENABLE/START_ROSPEC with an LLRPStatus, sends KEEPALIVE at the configured period and
counts the acks, and, once a ROSpec is started, sends an RO_ACCESS_REPORT for ``read(...)``.
Unknown messages get an ERROR_MESSAGE (M_UnsupportedMessage), as the spec says.

Faults for tests and demos: ``silent`` (no keepalives or reports), ``garbage()`` (bytes that
break LLRP framing), ``disconnect()`` (drop every client), ``refuse`` (the connection event says
another client is connected), ``reject_rospec`` (ADD_ROSPEC answered with M_ParameterError).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

from drivers.rfid import llrp
from drivers.rfid.llrp import TagRead

M_PARAMETER_ERROR = 100
M_UNSUPPORTED_MESSAGE = 109


class _Client:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.rospecs: dict[int, str] = {}  # id -> disabled | inactive | active
        self.keepalive: asyncio.Task[None] | None = None
        self.next_id = 1

    def send(self, msg_type: int, body: bytes = b"", msg_id: int | None = None) -> None:
        if msg_id is None:
            msg_id, self.next_id = self.next_id, self.next_id + 1
        self.writer.write(llrp.encode_message(msg_type, msg_id, body))

    @property
    def inventorying(self) -> bool:
        return "active" in self.rospecs.values()


class LlrpReader:
    """``port = await LlrpReader().start()``; ``read(TagRead(...))`` reports tags to clients."""

    def __init__(self) -> None:
        self.port = 0
        self.silent = False
        self.refuse = False
        self.reject_rospec = False
        self.received: list[int] = []  # message types received, in order
        self.keepalive_acks = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._clients: set[_Client] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.disconnect()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    @property
    def inventorying(self) -> int:
        """How many clients have a started ROSpec (and so receive reads)."""
        return sum(c.inventorying for c in self._clients)

    def read(self, *reads: TagRead) -> int:
        """Report tag reads in one RO_ACCESS_REPORT to every inventorying client; returns how many."""
        if self.silent:
            return 0
        body = b"".join(llrp.tag_report_data(r) for r in reads)
        sent = 0
        for c in list(self._clients):
            if c.inventorying:
                c.send(llrp.RO_ACCESS_REPORT, body)
                sent += 1
        return sent

    def send_raw(self, data: bytes) -> None:
        """Write raw bytes to every client (e.g. a hand-made report, or garbage)."""
        for c in list(self._clients):
            c.writer.write(data)

    def garbage(self) -> None:
        """Bytes that are not LLRP: the client must drop the connection and reconnect."""
        self.send_raw(b"\xff\xff\x00\x00GARBAGE\x00\x01\x02")

    def disconnect(self) -> None:
        """Drop every client connection (cable pulled, reader rebooted)."""
        for c in list(self._clients):
            c.writer.close()
            if c.keepalive is not None:
                c.keepalive.cancel()

    async def _keepalive(self, client: _Client, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            if not self.silent:
                client.send(llrp.KEEPALIVE)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        client = _Client(writer)
        self.connections += 1
        try:
            if self.refuse:
                client.send(llrp.READER_EVENT_NOTIFICATION, llrp.connection_event(2))
                await writer.drain()
                return
            self._clients.add(client)
            client.send(llrp.READER_EVENT_NOTIFICATION, llrp.connection_event(0))
            framer = llrp.LlrpFramer()
            while data := await reader.read(65536):
                for msg in framer.feed(data):
                    self.received.append(msg.type)
                    if not self._handle(client, msg):
                        return
                await writer.drain()
        except (ConnectionError, llrp.LlrpError):
            pass
        finally:
            self._clients.discard(client)
            if client.keepalive is not None:
                client.keepalive.cancel()  # leaves _tasks when done, so stop() can await it
            writer.close()
            self._tasks.discard(task)

    def _handle(self, c: _Client, msg: llrp.Message) -> bool:
        """Answer one message; False to close the connection."""
        t = msg.type

        def reply(code: int = 0, text: str = "") -> None:
            c.send(llrp.RESPONSE_OF[t], llrp.status(code, text), msg.id)

        if t == llrp.SET_READER_CONFIG:
            for ptype, value in llrp.iter_params(msg.body[1:]):
                if ptype == llrp.P_KEEPALIVE_SPEC and len(value) >= 5:
                    trigger, period_ms = struct.unpack_from("!BI", value)
                    if c.keepalive is not None:
                        c.keepalive.cancel()
                    if trigger == 1 and period_ms > 0:
                        c.keepalive = asyncio.create_task(self._keepalive(c, period_ms / 1000))
                        self._tasks.add(c.keepalive)
                        c.keepalive.add_done_callback(self._tasks.discard)
            reply()
        elif t == llrp.DELETE_ROSPEC:
            (rid,) = struct.unpack_from("!I", msg.body)
            if rid == 0:
                c.rospecs.clear()
            elif c.rospecs.pop(rid, None) is None:
                reply(M_PARAMETER_ERROR, f"no ROSpec {rid}")
                return True
            reply()
        elif t == llrp.ADD_ROSPEC:
            if self.reject_rospec:
                reply(M_PARAMETER_ERROR, "ROSpec not supported by this reader")
                return True
            ptype, value = next(llrp.iter_params(msg.body))
            (rid,) = struct.unpack_from("!I", value)
            if ptype != llrp.P_ROSPEC or rid == 0 or rid in c.rospecs:
                reply(M_PARAMETER_ERROR, f"bad or duplicate ROSpec {rid}")
                return True
            c.rospecs[rid] = "disabled"
            reply()
        elif t in (llrp.ENABLE_ROSPEC, llrp.START_ROSPEC):
            (rid,) = struct.unpack_from("!I", msg.body)
            want = "disabled" if t == llrp.ENABLE_ROSPEC else "inactive"
            if c.rospecs.get(rid) != want:
                reply(M_PARAMETER_ERROR, f"ROSpec {rid} is not {want}")
                return True
            c.rospecs[rid] = "inactive" if t == llrp.ENABLE_ROSPEC else "active"
            reply()
        elif t == llrp.KEEPALIVE_ACK:
            self.keepalive_acks += 1
        elif t == llrp.CLOSE_CONNECTION:
            reply()
            return False
        else:
            c.send(llrp.ERROR_MESSAGE, llrp.status(M_UNSUPPORTED_MESSAGE, f"message type {t}"), msg.id)
        return True


async def demo(port: int = 5084) -> None:  # pragma: no cover - manual use
    """Serve forever, reading two tags every second (for `sensegate demo` and by hand)."""
    dev = LlrpReader()
    await dev.start(port)
    try:
        n = 0
        while True:
            await asyncio.sleep(1)
            n += 1
            dev.read(TagRead("E2801160600002054A1B0C01", 1, -52), TagRead(f"3000{n:020X}", 2, -61))
    finally:
        with contextlib.suppress(Exception):
            await dev.stop()
