"""The NMEA parser: known sentences decoded exactly, hostile bytes never escape as exceptions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.gps.nmea import MAX_SENTENCE, Fix, NmeaError, NmeaFramer, Sentence, Tracker, parse_sentence
from hil.devices.nmea_gps import nmea

GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"


def test_textbook_gga_and_rmc() -> None:
    t = Tracker()
    assert t.update(parse_sentence(GGA)) is None  # the epoch is not complete until its RMC
    fix = t.update(parse_sentence(RMC))
    assert fix == Fix(
        valid=True, lat=48.1173, lon=11.51666667, alt=545.4, speed=11.524, course=84.4, quality=1, sats=8, hdop=0.9
    )


@pytest.mark.parametrize("talker", ["GP", "GN", "GL", "GA", "BD", "GB"])
def test_talker_ids(talker: str) -> None:
    body = f"{talker}GGA,000001.00,0100.00000,S,00200.00000,W,2,12,0.5,-3.0,M,,M,,"
    s = parse_sentence(nmea(body).rstrip())
    assert (s.talker, s.kind) == (talker, "GGA")
    t = Tracker()
    t.update(s)
    fix = t.fix()
    assert fix is not None and (fix.lat, fix.lon, fix.quality, fix.alt) == (-1 - 0 / 60, -2.0, 2, -3.0)


def test_vtg_gsa_gsv_and_epoch_by_next_sentence() -> None:
    t = Tracker()
    t.update(parse_sentence(nmea("GNGGA,101010,2101.71066,N,10548.28902,E,1,05,1.2,10.0,M,,,,").rstrip()))
    t.update(parse_sentence(nmea("GNVTG,123.4,T,,M,1.0,N,36.000,K,A").rstrip()))
    t.update(parse_sentence(nmea("GNGSA,A,3,01,02,,,,,,,,,,,2.0,0.8,1.8").rstrip()))
    t.update(parse_sentence(nmea("GLGSV,2,1,07,65,40,083,46").rstrip()))
    assert t.in_view == {"GL": 7}
    # a GGA-only receiver: the next epoch's GGA completes the previous one
    fix = t.update(parse_sentence(nmea("GNGGA,101011,2101.71066,N,10548.28902,E,1,05,1.2,10.0,M,,,,").rstrip()))
    assert fix == Fix(True, 21.028511, 105.804817, 10.0, 10.0, 123.4, 1, 5, 0.8)


def test_gsa_mode_1_drops_the_fix() -> None:
    t = Tracker()
    t.update(parse_sentence(GGA))
    t.update(parse_sentence(nmea("GPGSA,A,1,,,,,,,,,,,,,,,").rstrip()))
    fix = t.fix()
    assert fix is not None and not fix.valid and fix.quality == 0 and fix.lat == 48.1173


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"GPGGA,1*00",
        GGA[:-2] + b"00",  # checksum mismatch
        GGA[:-3],  # no checksum
        GGA[:-2] + b"ZZ",
        b"$GPGGA\xff,1*00",
        b"$gpgga,1*" + b"%02X" % (0x67 ^ 0x70 ^ 0x67 ^ 0x67 ^ 0x61),
        b"$" + b"A" * MAX_SENTENCE,
    ],
)
def test_malformed_sentences(line: bytes) -> None:
    with pytest.raises(NmeaError):
        parse_sentence(line)


def test_missing_checksum_allowed_when_configured() -> None:
    assert parse_sentence(GGA[:-3], require_checksum=False).kind == "GGA"


@pytest.mark.parametrize(
    "body",
    [
        "GPGGA,123519,9107.038,N,01131.000,E,1,08,0.9,545.4,M,,M,,",  # lat > 90
        "GPGGA,123519,4860.000,N,01131.000,E,1,08,0.9,545.4,M,,M,,",  # 60 minutes
        "GPGGA,123519,4807.038,X,01131.000,E,1,08,0.9,545.4,M,,M,,",  # hemisphere
        "GPGGA,123519,4807.038,N,18101.000,E,1,08,0.9,545.4,M,,M,,",  # lon > 180
        "GPGGA,123519,4807.038,N,01131.000,E,1,08,nan,545.4,M,,M,,",  # NaN is no number
        "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,inf,M,,M,,",
        "GPGGA,123519,4807.038,N,01131.000,E,,08,0.9,545.4,M,,M,,",  # no quality
        "GPGGA,256060,4807.038,N,01131.000,E,1,08,0.9,545.4,M,,M,,",  # bad time
        "GPRMC,123519,Q,4807.038,N,01131.000,E,022.4,084.4,230394,,",  # status
        "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,360.0,230394,,",  # course
        "GPGSA,A,4,,,,,,,,,,,,,,,",
        "GPGSV,1,2,04",
    ],
)
def test_nonsense_fields_raise_and_change_nothing(body: str) -> None:
    t = Tracker()
    with pytest.raises(NmeaError):
        t.update(parse_sentence(nmea(body).rstrip()))
    assert t.fix() is None and t.lat is None


def test_framer_resyncs_counts_and_stays_bounded() -> None:
    f = NmeaFramer()
    good = nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
    stream = b"\xff\xfe\x80" * 100 + b"$GPGGA,12" + good + good[:-4] + b"00\r\n" + b"junk\n" + nmea("PUBX,00,081350.00")
    out: list[Sentence] = []
    for i in range(0, len(stream), 7):  # arbitrary chunking: partial sentences across reads
        out += f.feed(stream[i : i + 7])
        assert len(f._buf) <= MAX_SENTENCE
    assert [s.kind for s in out] == ["GGA"]
    c = f.counters
    assert (c.sentences, c.checksum_errors, c.ignored) == (1, 1, 1)
    assert c.overlong >= 1 and c.garbage >= 1


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_framer_never_raises_and_stays_bounded(chunks: list[bytes]) -> None:
    f, t = NmeaFramer(), Tracker()
    for chunk in chunks:
        for s in f.feed(chunk):
            try:
                t.update(s)
            except NmeaError:
                pass
        assert len(f._buf) <= MAX_SENTENCE


_field = st.one_of(
    st.sampled_from(["", "0", "1", "A", "V", "N", "S", "E", "W", "T", "K", "M", "99.99", "4807.038", "01131.000"]),
    st.text(alphabet="0123456789.-+NSEWAVTKM", max_size=12),
)


@given(
    st.sampled_from(["GP", "GN", "GL", "GA", "BD", "XX"]),
    st.sampled_from(["GGA", "RMC", "GSA", "VTG", "GSV", "GLL"]),
    st.lists(_field, max_size=20),
)
def test_well_framed_sentences_with_random_fields(talker: str, kind: str, fields: list[str]) -> None:
    # a valid checksum lets random fields reach the tracker: only NmeaError may come out
    f, t = NmeaFramer(), Tracker()
    for s in f.feed(nmea(",".join([talker + kind, *fields]))[: MAX_SENTENCE + 2]):
        try:
            fix = t.update(s)
        except NmeaError:
            continue
        for value in (fix, t.fix()):
            if value is not None:
                assert -90 <= value.lat <= 90 and -180 <= value.lon <= 180
