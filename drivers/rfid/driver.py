"""The rfid driver: glue between the EM4100 / LLRP protocol modules and the host's streaming contract."""

from __future__ import annotations

import asyncio
import time

from drivers.rfid import em4100, llrp
from drivers.rfid.config import RfidConfig
from drivers.rfid.dedup import Deduplicator
from gateway.driver_api import Driver, DriverContext, Emit, NotReady, PollError
from gateway.serial_stream import SerialStream


class RfidDriver(Driver):
    """Emits one ``tag`` reading per tag read (after de-duplication); LLRP adds antenna and rssi."""

    config: RfidConfig

    def __init__(self, config: RfidConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self._emit: Emit | None = None
        self._dedup = Deduplicator(config.dedup_window)
        self._serial: SerialStream | None = None
        self._frames = em4100.Em4100Framer()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._llrp = llrp.LlrpFramer()
        self._pending: list[llrp.Message] = []  # framed but not yet handled
        self._msg_id = 0
        self._last_ts = 0
        self.bad_reports = 0  # LLRP reports whose parameters did not parse
        self.reader_errors = 0  # ERROR_MESSAGEs from the reader

    # -- setup ---------------------------------------------------------------------------

    async def setup(self) -> None:
        cfg = self.config
        if cfg.source == "serial":
            self._serial = SerialStream(cfg.port, cfg.baudrate, self._on_serial, driver="rfid", extra="rfid")
            await self._serial.open()
            return
        try:
            self._reader, self._writer = await asyncio.open_connection(cfg.host, cfg.llrp_port)
        except OSError as e:
            raise NotReady(f"cannot connect to LLRP reader {cfg.host}:{cfg.llrp_port}: {e.strerror or e}") from e
        try:
            await self._llrp_handshake()
        except (llrp.LlrpError, PollError) as e:
            raise NotReady(f"LLRP reader {cfg.host}:{cfg.llrp_port}: {e}") from e
        except OSError as e:
            raise NotReady(f"LLRP reader {cfg.host}:{cfg.llrp_port} dropped the connection: {e}") from e

    async def _llrp_handshake(self) -> None:
        """Wait for the connection event, then install and start our ROSpec (see llrp.py)."""
        while True:
            msg = await self._next_message()
            if msg.type == llrp.READER_EVENT_NOTIFICATION:
                code = llrp.parse_connection_event(msg.body)
                if code is None:
                    continue
                if code != 0:
                    raise PollError(f"connection refused: {llrp.CONNECTION_STATUS.get(code, f'status {code}')}")
                break
        rid = self.config.rospec_id
        keepalive_ms = int(self.config.keepalive * 1000)
        await self._request(llrp.SET_READER_CONFIG, llrp.keepalive_config(keepalive_ms))
        await self._request(llrp.DELETE_ROSPEC, llrp.rospec_id_body(0))  # ours from a past session, and any other
        await self._request(llrp.ADD_ROSPEC, llrp.rospec(rid))
        await self._request(llrp.ENABLE_ROSPEC, llrp.rospec_id_body(rid))
        await self._request(llrp.START_ROSPEC, llrp.rospec_id_body(rid))

    def _send(self, msg_type: int, body: bytes = b"", msg_id: int | None = None) -> int:
        assert self._writer is not None
        if msg_id is None:
            self._msg_id = (self._msg_id + 1) & 0xFFFFFFFF
            msg_id = self._msg_id
        self._writer.write(llrp.encode_message(msg_type, msg_id, body))
        return msg_id

    async def _request(self, msg_type: int, body: bytes) -> None:
        msg_id = self._send(msg_type, body)
        want = llrp.RESPONSE_OF[msg_type]
        assert self._writer is not None
        await self._writer.drain()
        while True:
            msg = await self._next_message()
            if msg.type == want and msg.id == msg_id:
                code, text = llrp.parse_status(msg.body)
                if code != 0:
                    raise PollError(f"reader refused {_NAMES.get(msg_type, msg_type)}: status {code} {text}".strip())
                return
            if msg.type == llrp.ERROR_MESSAGE:
                code, text = llrp.parse_status(msg.body)
                raise PollError(f"reader error during setup: status {code} {text}".strip())
            self._handle_async(msg)  # keepalives (and early reports) while we wait

    async def _next_message(self) -> llrp.Message:
        """The next whole message; a closed connection or broken framing raises."""
        while True:
            if self._pending:
                return self._pending.pop(0)
            assert self._reader is not None
            data = await self._reader.read(65536)
            if not data:
                raise PollError("reader closed the connection")
            self._pending.extend(self._llrp.feed(data))

    # -- run -----------------------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        self._emit = emit
        if self._serial is not None:
            await self._serial.run()  # returns only by raising PollError
            return
        limit = 3 * self.config.keepalive or None
        while True:
            try:
                async with asyncio.timeout(limit):
                    msg = await self._next_message()
            except TimeoutError:
                raise PollError(f"no KEEPALIVE from the reader for {limit:g}s") from None
            except llrp.LlrpError as e:
                raise PollError(f"LLRP stream broken: {e}") from e
            except OSError as e:
                raise PollError(f"connection lost: {e.strerror or e}") from e
            self._handle_async(msg)
            if msg.type == llrp.KEEPALIVE:
                assert self._writer is not None
                try:
                    await self._writer.drain()
                except OSError as e:
                    raise PollError(f"connection lost: {e.strerror or e}") from e

    def _handle_async(self, msg: llrp.Message) -> None:
        """Messages the reader sends on its own: reports, keepalives, events, errors."""
        if msg.type == llrp.RO_ACCESS_REPORT:
            try:
                reads = llrp.parse_ro_access_report(msg.body)
            except llrp.LlrpError as e:
                self.bad_reports += 1
                if self.bad_reports == 1 or self.bad_reports % 1000 == 0:
                    self.ctx.log.warning(
                        "%s: dropped a malformed report (%d so far): %s", self.ctx.instance, self.bad_reports, e
                    )
                return
            for read in reads:
                self._tag(read.epc, read.antenna, read.rssi)
        elif msg.type == llrp.KEEPALIVE:
            self._send(llrp.KEEPALIVE_ACK, b"", msg.id)
        elif msg.type == llrp.ERROR_MESSAGE:
            self.reader_errors += 1
            try:
                code, text = llrp.parse_status(msg.body)
            except llrp.LlrpError:
                code, text = -1, "(unparsable)"
            self.ctx.log.warning("%s: reader error status %d %s", self.ctx.instance, code, text)

    def _on_serial(self, data: bytes) -> None:
        for tag in self._frames.feed(data):
            self._tag(tag, None, None)

    def _tag(self, tag: str, antenna: int | None, rssi: int | None) -> None:
        if self._emit is None or not self._dedup.accept(tag, time.monotonic()):
            return
        ts = max(time.time_ns(), self._last_ts + 1)  # one read's readings share a distinct timestamp
        self._last_ts = ts
        self._emit(self.config.point, tag, ts_ns=ts)
        if antenna is not None:
            self._emit("antenna", antenna, ts_ns=ts)
        if rssi is not None:
            self._emit("rssi", rssi, unit="dBm", ts_ns=ts)

    @property
    def counters(self) -> dict[str, int]:
        """What the parsers saw (for tests and status)."""
        c = self._frames.counters
        return {
            "frames": c.frames,
            "bad_frames": c.bad_frames,
            "stray_bytes": c.stray_bytes,
            "duplicates": self._dedup.suppressed,
            "bad_reports": self.bad_reports,
            "reader_errors": self.reader_errors,
        }

    async def close(self) -> None:
        serial, self._serial = self._serial, None
        if serial is not None:
            serial.close()
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            try:  # polite goodbye; the reader also cleans up when the socket just closes
                writer.write(llrp.encode_message(llrp.CLOSE_CONNECTION, 0))
                writer.close()
                await writer.wait_closed()
            except OSError:
                pass


_NAMES = {
    llrp.SET_READER_CONFIG: "SET_READER_CONFIG",
    llrp.DELETE_ROSPEC: "DELETE_ROSPEC",
    llrp.ADD_ROSPEC: "ADD_ROSPEC",
    llrp.ENABLE_ROSPEC: "ENABLE_ROSPEC",
    llrp.START_ROSPEC: "START_ROSPEC",
}
