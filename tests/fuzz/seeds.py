"""Write the seed corpus (tests/fuzz/corpus/<target>/seed-*) from what the tests and the simulated
devices already send: `python -m tests.fuzz.seeds`. Run again when a format grows; inputs the
fuzzers found and that became regression tests live beside the seeds as found-*."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from pathlib import Path

from drivers.rfid import em4100, llrp
from gateway import cose
from gateway.remote import envelope
from hil.devices.nmea_gps import nmea, nmea_log
from tests.fuzz.targets import OPS_KEY

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"
JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000ffd9")
PNG = bytes.fromhex("89504e470d0a1a0a0000000d494844520000000100000001080600000000000000") + b"IEND\xaeB`\x82"


def _nmea() -> list[bytes]:
    route = [(52.52, 13.405, 34.0), (52.53, 13.41, 36.5)]
    return [nmea_log(route, 3), nmea("GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1"),
            nmea("GPVTG,054.7,T,034.4,M,005.5,N,010.2,K"), b"$GPGGA,,,,,,0,00,,,M,,M,,*66\r\n",
            nmea("GPGLL,4916.45,N,12311.12,W,225444,A")]


def _modbus() -> list[bytes]:
    return [bytes([t, c, 3, 9]) + bytes.fromhex("41c80000deadbeef0001000200030004") for t, c in
            ((0, 0), (2, 0), (5, 0), (8, 0), (9, 3), (10, 1), (0x87, 0x80))]


def _rfid() -> list[bytes]:
    report = llrp.encode_message(llrp.RO_ACCESS_REPORT, 7, llrp.tag_report_data(
        llrp.TagRead("E2003412B802011526304412", antenna=1, rssi=-55, first_seen_us=1_700_000_000_000_000,
                     seen_count=2)))
    return [em4100.encode_frame("0400E3C6B1"), em4100.encode_frame("1A00B2C3D4") * 2, report,
            llrp.encode_message(llrp.KEEPALIVE, 1), llrp.encode_message(63, 2, llrp.connection_event()),
            llrp.encode_message(llrp.ADD_ROSPEC_RESPONSE, 3, llrp.status(0, "ok"))]


def _ble() -> list[bytes]:
    return [bytes.fromhex(h) for h in (
        "405e3f755f11d5",  # BTHome v2: precipitation
        "42b2188d38c1a404138a01",  # BTHome v2 with the device's MAC: pressure
        "4002c40903bf13",  # BTHome v2: temperature, humidity
        "0512fc5394c37c0004fffc040cac364200cdcbb8334c884f",  # Ruuvi RAWv2 (Ruuvi's test vector)
        "0215e2c56db5dffb48d2b060d0f5a71096e000010002c5",  # iBeacon
        "20000bb81800000000010000000a",  # Eddystone TLM
        "10ee0373656e736567617465076f7267",  # Eddystone URL
    )]


def _camera() -> list[bytes]:
    return [b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 22\r\n\r\n" + JPEG,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: image/png\r\n\r\n"
            + f"{len(PNG):x}\r\n".encode() + PNG + b"\r\n0\r\n\r\n",
            b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm="cam", qop="auth", nonce="abc", '
            b'algorithm=MD5, Basic realm="x"\r\n\r\n']


def _yaml() -> list[bytes]:
    files = [*sorted((ROOT / "configs").glob("*.yaml")), *sorted((ROOT / "drivers").glob("*/sample.yaml"))]
    return [p.read_bytes() for p in files]


def _cose_and_batches() -> tuple[list[bytes], list[bytes]]:
    from gateway.batcher import Batcher
    from gateway.config.schema import BatchSection, BufferSection
    from gateway.driver_api import Reading
    from gateway.store import Store

    async def make() -> list[bytes]:
        with tempfile.TemporaryDirectory() as d:
            buf = Store(Path(d) / "b.db", "gw-fuzz", BufferSection(), BatchSection())
            await buf.open()
            out = []
            for i, value in enumerate((21.5, True, "open", b"\x00\x01", 7)):
                unit = "Cel" if i == 0 else None
                buf.put(Reading("gw-fuzz", f"p{i}", 1_700_000_000_000_000_000 + i, value, unit=unit))
                batch = await buf.make_batch(Batcher(OPS_KEY, "gw-fuzz", BatchSection()))
                if batch is not None:
                    out.append(batch.data)
            await buf.close()
            return out

    batches = asyncio.run(make())
    protected = cose.protected_header(OPS_KEY, OPS_KEY.kid, {cose.CONTENT_TYPE: 112})
    plain = cose.encode_sign1(protected, b"\x80", cose.sign(OPS_KEY, protected, b"\x80"))
    return [plain, *batches], batches


def _senml(batches: list[bytes]) -> list[bytes]:
    return [cose.parse_sign1(b).payload for b in batches]


def _remote() -> list[bytes]:
    cfg = (ROOT / "configs" / "street-cabinet.yaml").read_bytes()
    return [envelope.sign(OPS_KEY, "config", "gw-fuzz", cfg, revision=3),
            envelope.sign(OPS_KEY, "command", envelope.group_target("all"),
                          envelope.encode_command("c-1", "ping", {}, 4_000_000_000.0))]


def _keyevents() -> list[bytes]:
    from gateway.keyevents import history_message, make_revocation, make_rotation
    from gateway.keys import Ed25519PrivateKey
    from tests.fuzz.targets import GATEWAY_KEY

    nxt, ops2 = Ed25519PrivateKey(bytes(range(2, 34))), Ed25519PrivateKey(bytes(range(3, 35)))
    rotation = make_rotation(GATEWAY_KEY, nxt, "gw-fuzz", 7, 100, issued=1_795_000_000)
    return [rotation, history_message([rotation]),
            make_revocation(OPS_KEY, nxt.kid, "gw-fuzz", "stolen", issued=1_795_000_000),
            make_rotation(OPS_KEY, ops2, issued=1_795_000_000),
            make_revocation(OPS_KEY, ops2.kid, reason="lost", issued=1_795_000_000)]


def write() -> dict[str, int]:
    """Write every target's seeds; returns how many each got."""
    cose_seeds, batches = _cose_and_batches()
    seeds = {"nmea": _nmea(), "modbus": _modbus(), "rfid": _rfid(), "ble": _ble(), "camera": _camera(),
             "yaml": _yaml(), "cose": cose_seeds, "senml": _senml(batches), "remote": _remote(),
             "receiver": batches, "keyevent": _keyevents()}
    for name, items in seeds.items():
        d = CORPUS / name
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("seed-*"):
            old.unlink()
        for data in items:
            (d / f"seed-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)
    return {k: len(v) for k, v in seeds.items()}


if __name__ == "__main__":
    print(write())
