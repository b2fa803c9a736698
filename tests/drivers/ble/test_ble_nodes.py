"""Allow-list, node naming, de-duplication and last-seen bookkeeping; the config schema."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.ble import MANIFEST
from drivers.ble.config import BleConfig
from drivers.ble.nodes import NodeBook, node_id_for
from gateway.schema import ValidationError
from gateway.testing import make_instance


def test_open_book_takes_anyone_listed_book_only_matches() -> None:
    assert NodeBook().open
    book = NodeBook(addresses=["c4:7c:8d:*", "AA:BB:CC:DD:EE:FF"], names=["Ruuvi *"])
    assert not book.open
    assert book.listed("C4:7C:8D:6A:00:01", None)
    assert book.listed("aa:bb:cc:dd:ee:ff", "")
    assert book.listed("11:22:33:44:55:66", "ruuvi 0A1B")  # names match case-insensitively
    assert not book.listed("11:22:33:44:55:66", "phone")
    assert not book.listed("11:22:33:44:55:66", None)
    named = NodeBook(addresses=["00:*"], node_names={"11:22:33:44:55:66": "door"})
    assert named.listed("11:22:33:44:55:66", None)  # naming a device lists it


def test_node_ids() -> None:
    book = NodeBook(node_names={"c4:7c:8d:6a:00:01": "greenhouse-1"}, prefix="ble-")
    assert book.node("C4:7C:8D:6A:00:01") == "greenhouse-1"
    assert book.node("a4:c1:38:00:00:02") == "ble-a4c138000002"
    assert node_id_for("A4:C1:38:00:00:02", "") == "a4c138000002"


def test_dedup_window_and_online_offline() -> None:
    book = NodeBook(dedup_window=10, offline_after=60)
    first = book.heard("A4:C1:38:00:00:02", b"p1", now=100.0)
    assert (first.node, first.came_online, first.duplicate) == ("ble-a4c138000002", True, False)
    assert book.heard("A4:C1:38:00:00:02", b"p1", now=105.0).duplicate  # same payload within 10 s
    assert not book.heard("A4:C1:38:00:00:02", b"p2", now=106.0).duplicate  # new payload
    assert book.heard("A4:C1:38:00:00:02", b"p2", now=115.9).duplicate
    repeat = book.heard("A4:C1:38:00:00:02", b"p2", now=116.0)  # window over: emitted again
    assert not repeat.duplicate and not repeat.came_online
    assert book.next_deadline(120.0) == 56.0
    assert book.sweep(175.0) == []
    assert book.sweep(176.0) == [("ble-a4c138000002", 60.0)]
    assert book.sweep(200.0) == []  # reported once
    assert book.online_nodes() == []
    back = book.heard("A4:C1:38:00:00:02", b"p2", now=201.0)
    assert back.came_online and book.online_nodes() == ["ble-a4c138000002"]


def test_zero_window_never_drops() -> None:
    book = NodeBook(dedup_window=0)
    assert not book.heard("A4:C1:38:00:00:02", b"p", now=1.0).duplicate
    assert not book.heard("A4:C1:38:00:00:02", b"p", now=1.0).duplicate


def test_full_book_forgets_the_longest_silent() -> None:
    book = NodeBook(max_nodes=2)
    book.heard("00:00:00:00:00:01", b"", now=1.0)
    book.heard("00:00:00:00:00:02", b"", now=2.0)
    third = book.heard("00:00:00:00:00:03", b"", now=3.0)
    assert third.forgotten == "ble-000000000001"
    assert set(book.entries) == {"00:00:00:00:00:02", "00:00:00:00:00:03"}


@given(st.lists(st.tuples(st.integers(0, 50), st.binary(max_size=2)), max_size=200))
def test_book_stays_bounded(events: list[tuple[int, bytes]]) -> None:
    book = NodeBook(max_nodes=8, dedup_window=1, offline_after=5)
    for t, (n, payload) in enumerate(events):
        book.heard(f"00:00:00:00:00:{n:02X}", payload, now=float(t))
        book.sweep(float(t))
        assert len(book.entries) <= 8


# -- config -------------------------------------------------------------------------------------


def test_config_defaults_and_normalisation() -> None:
    cfg = make_instance(
        MANIFEST,
        node_names={"c4:7c:8d:6a:00:01": "greenhouse-1"},
        addresses=["c4:7c:8d:*"],
        gatt=[{"address": "e0:00:00:00:00:07", "characteristic": "0x2A6E", "point": "temperature"}],
    ).config
    assert isinstance(cfg, BleConfig)
    assert (cfg.adapter, cfg.scan_mode, cfg.dedup_window, cfg.offline_after) == ("hci0", "auto", 10.0, 300.0)
    assert cfg.formats == ["bthome", "ruuvi", "ibeacon", "eddystone"]
    assert cfg.node_names == {"C4:7C:8D:6A:00:01": "greenhouse-1"}
    assert cfg.addresses == ["C4:7C:8D:*"]
    g = cfg.gatt[0]
    assert (g.address, g.characteristic, g.format, g.interval) == (
        "E0:00:00:00:00:07",
        "00002a6e-0000-1000-8000-00805f9b34fb",
        "<h",
        60.0,
    )


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"adapter": "bluetooth0"}, "adapter"),
        ({"scan_mode": "loud"}, "scan_mode"),
        ({"formats": ["altbeacon"]}, "formats"),
        ({"node_names": {"not-an-address": "x"}}, "not a Bluetooth address"),
        ({"node_names": {"C4:7C:8D:6A:00:01": "a", "C4:7C:8D:6A:00:02": "a"}}, "same node id"),
        ({"node_names": {"C4:7C:8D:6A:00:01": "bad id!"}}, "node id"),
        ({"addresses": ["phone"]}, "address pattern"),
        ({"formats": []}, "nothing to do"),
        ({"gatt": [{"address": "E0:00:00:00:00:07", "characteristic": "temp", "point": "t"}]}, "not a UUID"),
        (
            {"gatt": [{"address": "E0:00:00:00:00:07", "characteristic": "2a6e", "point": "t", "format": "<hh"}]},
            "exactly one number",
        ),
        (
            {"gatt": [{"address": "E0:00:00:00:00:07", "characteristic": "2a6e", "point": "t", "format": "<z"}]},
            "struct format",
        ),
        ({"gatt": [{"address": "E0", "characteristic": "2a6e", "point": "t"}]}, "Bluetooth address"),
        ({"dedup": "10s"}, "dedup"),  # unknown key
    ],
)
def test_config_errors_name_the_problem(options: dict[str, object], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        make_instance(MANIFEST, **options)
