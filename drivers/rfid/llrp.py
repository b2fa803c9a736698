"""The LLRP 1.0.1 subset a UHF reader needs to stream tag reads to us (EPCglobal LLRP, binary/TCP).

Why our own and not sllurp: sllurp (3.x) reads its socket in a thread of its own, which the
driver contract forbids; the subset below is small enough to own and test exhaustively.

What this subset does (and all it does):

- messages: READER_EVENT_NOTIFICATION (ConnectionAttemptEvent), SET_READER_CONFIG with a
  KeepaliveSpec, DELETE_ROSPEC, ADD_ROSPEC, ENABLE_ROSPEC, START_ROSPEC and their responses
  (LLRPStatus checked), RO_ACCESS_REPORT, KEEPALIVE / KEEPALIVE_ACK, ERROR_MESSAGE,
  CLOSE_CONNECTION;
- one ROSpec: no start/stop triggers (started by START_ROSPEC, runs until the connection
  ends), one AISpec on all antennas (antenna id 0) with EPCglobal Class-1 Gen-2 inventory, and
  a report for every tag read (N=1) with AntennaID, PeakRSSI, FirstSeenTimestampUTC and
  TagSeenCount enabled;
- TagReportData parsing: EPC-96 (TV) or EPCData (TLV, any bit length), AntennaID, PeakRSSI,
  FirstSeenTimestampUTC; every other TV parameter of LLRP 1.0.1/1.1 (types 1-20) is skipped by
  its known size and unknown TLV parameters by their length.

Not supported: access specs (tag reads/writes), reader capabilities, custom (vendor)
extensions other than skipping their parameters, LLRP over TLS.

Malformed input raises ``LlrpError`` and nothing else. A framing error (bad version, absurd
length) means the stream cannot be trusted any more: the caller must drop the connection.
This module never imports ``gateway``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

VERSION = 1
HEADER = struct.Struct("!HII")  # ver/type, length (whole message), message id
MAX_MESSAGE = 1 << 20  # 1 MiB: a busy reader's report is well under this

# message types
SET_READER_CONFIG = 3
CLOSE_CONNECTION_RESPONSE = 4
SET_READER_CONFIG_RESPONSE = 13
CLOSE_CONNECTION = 14
ADD_ROSPEC = 20
DELETE_ROSPEC = 21
START_ROSPEC = 22
STOP_ROSPEC = 23
ENABLE_ROSPEC = 24
ADD_ROSPEC_RESPONSE = 30
DELETE_ROSPEC_RESPONSE = 31
START_ROSPEC_RESPONSE = 32
STOP_ROSPEC_RESPONSE = 33
ENABLE_ROSPEC_RESPONSE = 34
RO_ACCESS_REPORT = 61
KEEPALIVE = 62
READER_EVENT_NOTIFICATION = 63
KEEPALIVE_ACK = 72
ERROR_MESSAGE = 100

RESPONSE_OF = {
    SET_READER_CONFIG: SET_READER_CONFIG_RESPONSE,
    CLOSE_CONNECTION: CLOSE_CONNECTION_RESPONSE,
    ADD_ROSPEC: ADD_ROSPEC_RESPONSE,
    DELETE_ROSPEC: DELETE_ROSPEC_RESPONSE,
    START_ROSPEC: START_ROSPEC_RESPONSE,
    STOP_ROSPEC: STOP_ROSPEC_RESPONSE,
    ENABLE_ROSPEC: ENABLE_ROSPEC_RESPONSE,
}

# parameter types
P_UTC_TIMESTAMP = 128
P_ROSPEC = 177
P_RO_BOUNDARY_SPEC = 178
P_ROSPEC_START_TRIGGER = 179
P_ROSPEC_STOP_TRIGGER = 182
P_AISPEC = 183
P_AISPEC_STOP_TRIGGER = 184
P_INVENTORY_PARAMETER_SPEC = 186
P_KEEPALIVE_SPEC = 220
P_RO_REPORT_SPEC = 237
P_TAG_REPORT_CONTENT_SELECTOR = 238
P_TAG_REPORT_DATA = 240
P_EPC_DATA = 241
P_READER_EVENT_NOTIFICATION_DATA = 246
P_CONNECTION_ATTEMPT_EVENT = 256
P_LLRP_STATUS = 287

# TV parameters: type -> value size in bytes (LLRP 1.0.1 section 16.2.7.3, 1.1 adds 19-20)
TV_SIZES = {
    1: 2,  # AntennaID
    2: 8,  # FirstSeenTimestampUTC (microseconds)
    3: 8,  # FirstSeenTimestampUptime
    4: 8,  # LastSeenTimestampUTC
    5: 8,  # LastSeenTimestampUptime
    6: 1,  # PeakRSSI (signed dBm)
    7: 2,  # ChannelIndex
    8: 2,  # TagSeenCount
    9: 4,  # ROSpecID
    10: 2,  # InventoryParameterSpecID
    11: 2,  # C1G2-CRC
    12: 2,  # C1G2-PC
    13: 12,  # EPC-96
    14: 2,  # SpecIndex
    15: 2,  # ClientRequestOpSpecResult
    16: 4,  # AccessSpecID
    17: 2,  # OpSpecID
    18: 4,  # C1G2SingulationDetails
    19: 2,  # C1G2XPCW1
    20: 2,  # C1G2XPCW2
}
TV_ANTENNA_ID, TV_FIRST_SEEN_UTC, TV_PEAK_RSSI, TV_TAG_SEEN_COUNT, TV_EPC96 = 1, 2, 6, 8, 13

CONNECTION_STATUS = {
    0: "success",
    1: "a reader-initiated connection already exists",
    2: "a client-initiated connection already exists",
    3: "failed (reason other)",
    4: "another connection attempted",
}


class LlrpError(ValueError):
    """Malformed LLRP: a bad header or length, a truncated or unknown parameter."""


@dataclass(slots=True, frozen=True)
class Message:
    type: int
    id: int
    body: bytes


@dataclass(slots=True, frozen=True)
class TagRead:
    """One TagReportData: the EPC as upper-case hex, and what the reader said about the read."""

    epc: str
    antenna: int | None = None
    rssi: int | None = None  # dBm
    first_seen_us: int | None = None  # reader's UTC clock, microseconds since the epoch
    seen_count: int | None = None


# -- encoding -----------------------------------------------------------------------------


def encode_message(msg_type: int, msg_id: int, body: bytes = b"") -> bytes:
    """A whole message: header (version 1) and body."""
    return HEADER.pack((VERSION << 10) | (msg_type & 0x3FF), HEADER.size + len(body), msg_id & 0xFFFFFFFF) + body


def tlv(param_type: int, payload: bytes = b"") -> bytes:
    """A TLV parameter."""
    return struct.pack("!HH", param_type & 0x3FF, 4 + len(payload)) + payload


def tv(param_type: int, value: bytes) -> bytes:
    """A TV parameter (the caller gives the value at its fixed size)."""
    if TV_SIZES.get(param_type) != len(value):
        raise ValueError(f"TV parameter {param_type} takes {TV_SIZES.get(param_type)} bytes")
    return bytes([0x80 | param_type]) + value


def rospec(rospec_id: int) -> bytes:
    """The one ROSpec this client uses (see the module docstring)."""
    boundary = tlv(
        P_RO_BOUNDARY_SPEC,
        tlv(P_ROSPEC_START_TRIGGER, b"\x00") + tlv(P_ROSPEC_STOP_TRIGGER, struct.pack("!BI", 0, 0)),
    )
    aispec = tlv(
        P_AISPEC,
        struct.pack("!HH", 1, 0)  # one antenna id: 0 = all antennas
        + tlv(P_AISPEC_STOP_TRIGGER, struct.pack("!BI", 0, 0))
        + tlv(P_INVENTORY_PARAMETER_SPEC, struct.pack("!HB", 1, 1)),  # id 1, EPCglobal C1G2
    )
    # TagReportContentSelector bits (from bit 15): ROSpecID, SpecIndex, InventoryParameterSpecID,
    # AntennaID, ChannelIndex, PeakRSSI, FirstSeenTimestamp, LastSeenTimestamp, TagSeenCount, ...
    selector = (1 << 12) | (1 << 10) | (1 << 9) | (1 << 7)
    report = tlv(
        P_RO_REPORT_SPEC,
        struct.pack("!BH", 1, 1)  # report upon N tags or end of AISpec, N = 1
        + tlv(P_TAG_REPORT_CONTENT_SELECTOR, struct.pack("!H", selector)),
    )
    return tlv(P_ROSPEC, struct.pack("!IBB", rospec_id, 0, 0) + boundary + aispec + report)


def keepalive_config(period_ms: int) -> bytes:
    """SET_READER_CONFIG body: keep factory settings, send KEEPALIVE every ``period_ms``."""
    return b"\x00" + tlv(P_KEEPALIVE_SPEC, struct.pack("!BI", 1 if period_ms > 0 else 0, period_ms))


def rospec_id_body(rospec_id: int) -> bytes:
    """Body of DELETE/ENABLE/START/STOP_ROSPEC."""
    return struct.pack("!I", rospec_id)


def status(code: int = 0, description: str = "") -> bytes:
    """An LLRPStatus parameter (for responses)."""
    text = description.encode()
    return tlv(P_LLRP_STATUS, struct.pack("!HH", code, len(text)) + text)


def tag_report_data(read: TagRead) -> bytes:
    """A TagReportData parameter (for simulators and tests): EPC-96 when 12 bytes, else EPCData."""
    epc = bytes.fromhex(read.epc)
    inner = tv(TV_EPC96, epc) if len(epc) == 12 else tlv(P_EPC_DATA, struct.pack("!H", len(epc) * 8) + epc)
    if read.antenna is not None:
        inner += tv(TV_ANTENNA_ID, struct.pack("!H", read.antenna))
    if read.rssi is not None:
        inner += tv(TV_PEAK_RSSI, struct.pack("!b", read.rssi))
    if read.first_seen_us is not None:
        inner += tv(TV_FIRST_SEEN_UTC, struct.pack("!Q", read.first_seen_us))
    if read.seen_count is not None:
        inner += tv(TV_TAG_SEEN_COUNT, struct.pack("!H", read.seen_count))
    return tlv(P_TAG_REPORT_DATA, inner)


def connection_event(code: int = 0, utc_us: int = 0) -> bytes:
    """READER_EVENT_NOTIFICATION body announcing a connection attempt's outcome."""
    return tlv(
        P_READER_EVENT_NOTIFICATION_DATA,
        tlv(P_UTC_TIMESTAMP, struct.pack("!Q", utc_us)) + tlv(P_CONNECTION_ATTEMPT_EVENT, struct.pack("!H", code)),
    )


# -- decoding -----------------------------------------------------------------------------


class LlrpFramer:
    """Cut a TCP byte stream into messages; raises ``LlrpError`` when the framing is broken."""

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        out: list[Message] = []
        buf = self._buf
        buf += data
        while len(buf) >= HEADER.size:
            vt, length, msg_id = HEADER.unpack_from(buf)
            if vt >> 13 or (vt >> 10) & 0x7 != VERSION:
                buf.clear()
                raise LlrpError(f"not an LLRP 1.0 header (version/type word {vt:#06x})")
            if not HEADER.size <= length <= self.max_message:
                buf.clear()
                raise LlrpError(f"message length {length} out of range")
            if len(buf) < length:
                break
            out.append(Message(vt & 0x3FF, msg_id, bytes(buf[HEADER.size : length])))
            del buf[:length]
        return out


def iter_params(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, value) of each parameter in ``data``, TV and TLV; ``LlrpError`` when malformed."""
    i, n = 0, len(data)
    while i < n:
        first = data[i]
        if first & 0x80:  # TV: 1-byte type, fixed size
            ptype = first & 0x7F
            size = TV_SIZES.get(ptype)
            if size is None:
                raise LlrpError(f"unknown TV parameter type {ptype}")
            if i + 1 + size > n:
                raise LlrpError(f"TV parameter {ptype} truncated")
            yield ptype, data[i + 1 : i + 1 + size]
            i += 1 + size
            continue
        if i + 4 > n:
            raise LlrpError("TLV header truncated")
        ptype, length = struct.unpack_from("!HH", data, i)
        ptype &= 0x3FF
        if length < 4 or i + length > n:
            raise LlrpError(f"TLV parameter {ptype} length {length} out of range")
        yield ptype, data[i + 4 : i + length]
        i += length


def parse_status(body: bytes) -> tuple[int, str]:
    """The LLRPStatus (code, description) a response (or ERROR_MESSAGE) starts with."""
    for ptype, value in iter_params(body):
        if ptype == P_LLRP_STATUS:
            if len(value) < 4:
                raise LlrpError("LLRPStatus truncated")
            code, dlen = struct.unpack_from("!HH", value)
            if 4 + dlen > len(value):
                raise LlrpError("LLRPStatus description truncated")
            return code, value[4 : 4 + dlen].decode("utf-8", "replace")
    raise LlrpError("response without LLRPStatus")


def parse_connection_event(body: bytes) -> int | None:
    """The ConnectionAttemptEvent status in a READER_EVENT_NOTIFICATION, if it has one."""
    for ptype, value in iter_params(body):
        if ptype != P_READER_EVENT_NOTIFICATION_DATA:
            continue
        for inner_type, inner in iter_params(value):
            if inner_type == P_CONNECTION_ATTEMPT_EVENT:
                if len(inner) < 2:
                    raise LlrpError("ConnectionAttemptEvent truncated")
                return int(struct.unpack_from("!H", inner)[0])
    return None


def _fixed(fmt: str, value: bytes, name: str) -> int:
    """A fixed-size field; a TLV parameter can carry a TV type's number with any length."""
    if len(value) != struct.calcsize(fmt):
        raise LlrpError(f"{name} of {len(value)} bytes, not {struct.calcsize(fmt)}")
    return int(struct.unpack(fmt, value)[0])


def _tag_read(data: bytes) -> TagRead:
    epc: str | None = None
    antenna = rssi = first = count = None
    for ptype, value in iter_params(data):
        if ptype == TV_EPC96:
            epc = value.hex().upper()
        elif ptype == P_EPC_DATA:
            if len(value) < 2:
                raise LlrpError("EPCData truncated")
            bits = struct.unpack_from("!H", value)[0]
            nbytes = (bits + 7) // 8
            if 2 + nbytes > len(value):
                raise LlrpError(f"EPCData of {bits} bits truncated")
            epc = value[2 : 2 + nbytes].hex().upper()
        elif ptype == TV_ANTENNA_ID:
            antenna = _fixed("!H", value, "AntennaID")
        elif ptype == TV_PEAK_RSSI:
            rssi = _fixed("!b", value, "PeakRSSI")
        elif ptype == TV_FIRST_SEEN_UTC:
            first = _fixed("!Q", value, "FirstSeenTimestampUTC")
        elif ptype == TV_TAG_SEEN_COUNT:
            count = _fixed("!H", value, "TagSeenCount")
    if not epc:
        raise LlrpError("TagReportData without an EPC")
    return TagRead(epc, antenna, rssi, first, count)


def parse_ro_access_report(body: bytes) -> list[TagRead]:
    """Every TagReportData in an RO_ACCESS_REPORT body (other parameters are skipped)."""
    return [_tag_read(value) for ptype, value in iter_params(body) if ptype == P_TAG_REPORT_DATA]
