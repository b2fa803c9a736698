"""Inputs the LLRP fuzz target found (tests/fuzz): each must end in LlrpError, which the driver
counts, never in another exception that would take the reader connection down."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.rfid import llrp

FOUND = Path(__file__).resolve().parents[2] / "fuzz" / "corpus" / "rfid" / "found-tlv-with-tv-type-short-timestamp"


def test_a_tlv_parameter_numbered_like_a_tv_field_with_the_wrong_length_is_an_llrp_error() -> None:
    # found by atheris: a TLV parameter of type 2 (FirstSeenTimestampUTC's TV number) holding 6 bytes
    # raised struct.error out of parse_ro_access_report
    with pytest.raises(llrp.LlrpError, match="FirstSeenTimestampUTC of 6 bytes, not 8"):
        llrp.parse_ro_access_report(FOUND.read_bytes())


@pytest.mark.parametrize(("ptype", "name"), [(1, "AntennaID"), (2, "FirstSeenTimestampUTC"), (6, "PeakRSSI"),
                                             (8, "TagSeenCount")])
def test_every_fixed_size_field_checks_its_length(ptype: int, name: str) -> None:
    epc = llrp.tv(13, bytes(12))  # EPC-96
    odd = llrp.tlv(ptype, b"\x01\x02\x03")
    body = llrp.tlv(240, epc + odd)
    with pytest.raises(llrp.LlrpError, match=name):
        llrp.parse_ro_access_report(body)
