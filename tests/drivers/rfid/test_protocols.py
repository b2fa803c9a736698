"""EM4100 frames, LLRP messages and the de-duplicator: exact decoding and hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.rfid import llrp
from drivers.rfid.dedup import Deduplicator
from drivers.rfid.em4100 import MAX_FRAME, Em4100Framer, FrameError, card_number, encode_frame, parse_frame

# -- EM4100 -----------------------------------------------------------------------------------

# An RDM6300 frame: tag 62 00 E3 0E 8C, checksum 62^00^E3^0E^8C = 0x03
FRAME = b"\x02" + b"6200E30E8C" + b"03" + b"\x03"
BAD_CHECKSUM = b"\x02" + b"6200E30E8C" + b"0F" + b"\x03"


def test_known_frame() -> None:
    assert parse_frame(FRAME) == "6200E30E8C"
    assert encode_frame("6200e30e8c") == FRAME
    assert card_number("6200E30E8C") == 0x00E30E8C == 14880396


def test_id12_style_frame_with_crlf() -> None:
    assert parse_frame(FRAME[:-1] + b"\r\n\x03") == "6200E30E8C"


@pytest.mark.parametrize(
    "frame",
    [FRAME[:-1], FRAME[1:], BAD_CHECKSUM, FRAME.replace(b"62", b"6G"), b"\x02\x03", b"\x02" + b"0" * 13],
)
def test_bad_frames(frame: bytes) -> None:
    with pytest.raises(FrameError):
        parse_frame(frame)


def test_framer_resyncs_across_chunks() -> None:
    f = Em4100Framer()
    stream = b"\xff\x02123" + FRAME + BAD_CHECKSUM + b"\x03junk" + FRAME
    got = [t for b in stream for t in f.feed(bytes([b]))]
    assert got == ["6200E30E8C", "6200E30E8C"]
    assert f.counters.frames == 2 and f.counters.bad_frames == 1 and f.counters.stray_bytes == 1 + 4 + 5


@given(st.lists(st.binary(max_size=64), max_size=30))
def test_em4100_framer_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    f = Em4100Framer()
    for chunk in chunks:
        for tag in f.feed(chunk):
            assert len(tag) == 10 and tag == tag.upper()
            int(tag, 16)
        assert len(f._buf) < MAX_FRAME


@given(st.binary(min_size=5, max_size=5), st.binary(max_size=20))
def test_valid_frames_survive_surrounding_noise(tag: bytes, noise: bytes) -> None:
    noise = noise.replace(b"\x02", b"")  # an STX in the noise legitimately starts a frame
    f = Em4100Framer()
    assert f.feed(noise + encode_frame(tag.hex()) + noise) == [tag.hex().upper()]


# -- de-duplication ---------------------------------------------------------------------------


def test_dedup_window_slides_and_memory_is_bounded() -> None:
    d = Deduplicator(1.0, max_tags=3)
    assert d.accept("A", 0.0) and not d.accept("A", 0.5) and not d.accept("A", 1.4)  # still in the field
    assert d.accept("A", 2.5)  # gone for over a second
    for i, tag in enumerate("BCDEFG"):
        d.accept(tag, 3.0 + i * 0.01)
    assert len(d._last) <= 4 and d.suppressed == 2
    assert Deduplicator(0).accept("A", 0) and Deduplicator(0).accept("A", 0)


# -- LLRP -------------------------------------------------------------------------------------


def test_ro_access_report_golden_bytes() -> None:
    # Built by hand from the LLRP 1.0.1 tables: TagReportData(240) { EPC-96 (TV 13), AntennaID (TV 1)
    # = 3, PeakRSSI (TV 6) = -61, FirstSeenTimestampUTC (TV 2) }, inside RO_ACCESS_REPORT (61), id 9.
    epc = bytes.fromhex("E2801160600002054A1B0C01")
    inner = b"\x8d" + epc + b"\x81\x00\x03" + b"\x86\xc3" + b"\x82" + struct.pack("!Q", 1_700_000_000_123_456)
    body = struct.pack("!HH", 240, 4 + len(inner)) + inner
    wire = struct.pack("!HII", (1 << 10) | 61, 10 + len(body), 9) + body
    assert llrp.encode_message(llrp.RO_ACCESS_REPORT, 9, body) == wire
    assert llrp.tag_report_data(llrp.TagRead(epc.hex(), 3, -61, 1_700_000_000_123_456)) == body
    (msg,) = llrp.LlrpFramer().feed(wire)
    assert (msg.type, msg.id) == (61, 9)
    assert llrp.parse_ro_access_report(msg.body) == [
        llrp.TagRead("E2801160600002054A1B0C01", 3, -61, 1_700_000_000_123_456, None)
    ]


def test_epcdata_with_odd_bit_length_and_skipped_parameters() -> None:
    inner = (
        struct.pack("!HH", 241, 4 + 2 + 2) + struct.pack("!H", 12) + b"\xab\xc0"  # 12-bit EPC
        + b"\x89\x00\x00\x00\x01"  # ROSpecID (skipped)
        + struct.pack("!HH", 1023, 8) + b"\x00\x00\x00\x19"  # a vendor TLV (skipped)
        + b"\x88\x00\x05"  # TagSeenCount 5
    )  # fmt: skip
    body = struct.pack("!HH", 240, 4 + len(inner)) + inner
    assert llrp.parse_ro_access_report(body) == [llrp.TagRead("ABC0", None, None, None, 5)]


def test_rospec_encoding_golden_bytes() -> None:
    assert llrp.rospec(7).hex() == (
        "00b10041" "00000007" "0000"  # ROSpec (65 bytes): id 7, priority 0, state disabled
        "00b20012" "00b30005" "00" "00b60009" "0000000000"  # boundary: null start / stop triggers
        "00b70018" "0001" "0000" "00b80009" "0000000000" "00ba0007" "0001" "01"  # AISpec: all antennas, C1G2
        "00ed000d" "01" "0001" "00ee0006" "1680"  # report every tag; AntennaID, PeakRSSI, FirstSeen, SeenCount
    )  # fmt: skip


def test_status_and_connection_event_round_trip() -> None:
    assert llrp.parse_status(llrp.status(101, "field error")) == (101, "field error")
    assert llrp.parse_connection_event(llrp.connection_event(0)) == 0
    assert llrp.parse_connection_event(llrp.connection_event(4)) == 4
    assert llrp.parse_connection_event(b"") is None


@pytest.mark.parametrize(
    "header",
    [
        struct.pack("!HII", (2 << 10) | 61, 10, 1),  # version 2
        struct.pack("!HII", (1 << 10) | 61, 9, 1),  # shorter than its header
        struct.pack("!HII", (1 << 10) | 61, llrp.MAX_MESSAGE + 1, 1),
        b"\xff\xff" + bytes(8),
    ],
)
def test_framing_errors_raise_and_clear_the_buffer(header: bytes) -> None:
    f = llrp.LlrpFramer()
    with pytest.raises(llrp.LlrpError):
        f.feed(header)
    assert len(f._buf) == 0


@pytest.mark.parametrize(
    "body",
    [
        b"\x80\x00",  # TV type 0 does not exist
        b"\x8d\x00",  # EPC-96 truncated
        b"\x00\xf0",  # TLV header truncated
        struct.pack("!HH", 240, 3),  # TLV length below its header
        struct.pack("!HH", 240, 40),  # TLV longer than the message
        struct.pack("!HH", 240, 4),  # TagReportData without an EPC
        struct.pack("!HH", 240, 10) + struct.pack("!HH", 241, 6) + struct.pack("!H", 96),  # EPCData truncated
    ],
)
def test_malformed_reports_raise_llrp_error(body: bytes) -> None:
    with pytest.raises(llrp.LlrpError):
        llrp.parse_ro_access_report(body)


@given(st.lists(st.binary(max_size=200), max_size=10))
def test_framer_only_raises_llrp_error_and_stays_bounded(chunks: list[bytes]) -> None:
    f = llrp.LlrpFramer(max_message=4096)
    for chunk in chunks:
        try:
            msgs = f.feed(chunk)
        except llrp.LlrpError:
            continue
        assert len(f._buf) < 4096
        for m in msgs:
            for parse in (llrp.parse_ro_access_report, llrp.parse_status, llrp.parse_connection_event):
                try:
                    parse(m.body)
                except llrp.LlrpError:
                    pass


@given(st.binary(max_size=300))
def test_parameter_parsers_only_raise_llrp_error(body: bytes) -> None:
    for parse in (llrp.parse_ro_access_report, llrp.parse_status, llrp.parse_connection_event):
        try:
            parse(body)
        except llrp.LlrpError:
            pass


_tv = st.builds(lambda t, v: bytes([0x80 | t]) + v, st.integers(1, 20), st.binary(min_size=0, max_size=12))


@given(st.lists(st.one_of(_tv, st.binary(max_size=8)), max_size=12), st.binary(max_size=12))
def test_structured_tag_report_data_only_raises_llrp_error(parts: list[bytes], epc: bytes) -> None:
    inner = llrp.tv(13, epc.ljust(12, b"\0")) + b"".join(parts)
    body = struct.pack("!HH", 240, 4 + len(inner)) + inner
    try:
        reads = llrp.parse_ro_access_report(body)
    except llrp.LlrpError:
        return
    assert all(r.epc for r in reads)
