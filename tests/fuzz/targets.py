"""One fuzz target per parser of outside input: each takes the raw bytes an attacker or a broken
device could send and must end in a result or the parser's own declared error. Anything else (an
IndexError, a TypeError, a hang) is a finding: the harness lets it escape so atheris reports it.

Imported by tests/fuzz/run.py inside atheris' instrumentation, so every gateway/ and drivers/
module these reach is coverage-guided.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import cbor2

from drivers.ble import decoders as ble
from drivers.camera import http as camera_http
from drivers.camera import image as camera_image
from drivers.gps.nmea import NmeaError, NmeaFramer, Tracker, parse_sentence
from drivers.modbus import registers as modbus
from drivers.rfid import em4100, llrp
from gateway import cose, senml
from gateway.config import ConfigInvalid, load_config_bytes
from gateway.keys import Ed25519PrivateKey, key_id
from gateway.remote import envelope

Target = Callable[[bytes], None]
OPS_KEY = Ed25519PrivateKey(bytes(range(32)))
"""A fixed ops key: signed seeds in the corpus stay valid, so the fuzzer explores past the signature."""


def nmea(data: bytes) -> None:
    """GPS receivers over serial: the framer, every sentence, the fix tracker."""
    framer, tracker = NmeaFramer(require_checksum=False), Tracker()
    for s in framer.feed(data):
        try:
            tracker.update(s)
        except NmeaError:  # the driver counts and logs these
            pass
    for line in data.split(b"\n")[:64]:
        try:
            parse_sentence(line, require_checksum=False)
        except NmeaError:
            pass


_MODBUS_TYPES = [t for t in modbus.TYPES if t != "bool"]


def modbus_reply(data: bytes) -> None:
    """A Modbus reply's registers decoded by a point the first bytes choose (type, orders, count)."""
    if len(data) < 4:
        return
    kind = _MODBUS_TYPES[data[0] % len(_MODBUS_TYPES)]
    count = data[1] % 8 if kind in ("string", "bitfield") else 0
    bits = tuple((b % 32, f"b{i}") for i, b in enumerate(data[2:4])) if kind == "bitfield" else ()
    try:
        point = modbus.Point(name="p", table=modbus.Table.HOLDING, address=0, type=kind, count=count,
                             byte_order="little" if data[0] & 0x80 else "big",
                             word_order="little" if data[1] & 0x80 else "big", bits=bits)
    except modbus.MapError:
        return
    body = data[4:]
    words = [int.from_bytes(body[i:i + 2], "big") for i in range(0, len(body) - 1, 2)]
    request = modbus.Request(modbus.Table.HOLDING, 0, point.width, (point,))
    for reply in (words, [w - 32768 for w in words], [bool(w & 1) for w in words], list(body)):
        try:
            modbus.decode_block(request, reply)
        except modbus.DecodeError:
            pass
    coils = modbus.Request(modbus.Table.COILS, 0, len(body), tuple(
        modbus.Point(name=f"c{i}", table=modbus.Table.COILS, address=i, type="bool") for i in range(min(len(body), 8))))
    try:
        modbus.decode_block(coils, [b & 1 if i % 2 else b for i, b in enumerate(body)])
    except modbus.DecodeError:
        pass


def rfid(data: bytes) -> None:
    """Serial EM4100 readers and UHF readers' LLRP messages."""
    em4100.Em4100Framer().feed(data)
    try:
        em4100.parse_frame(data)
    except em4100.FrameError:
        pass
    try:
        messages = llrp.LlrpFramer().feed(data)
    except llrp.LlrpError:
        messages = []
    bodies = [m.body for m in messages] + [data]
    for body in bodies:
        for parse in (llrp.parse_ro_access_report, llrp.parse_status, llrp.parse_connection_event):
            try:
                parse(body)
            except llrp.LlrpError:
                pass


def ble_advert(data: bytes) -> None:
    """BLE advertisements: every format's decoder, and a whole advertisement as bleak hands it over."""
    for decode in (ble.decode_bthome, ble.decode_ruuvi, ble.decode_ibeacon, ble.decode_eddystone):
        try:
            decode(data)
        except ble.DecodeError:
            pass
    half = len(data) // 2
    ble.decode_advertisement({0x0499: data[:half], 0x004C: data[half:]},
                             {"fcd2": data, "0000feaa-0000-1000-8000-00805f9b34fb": data[half:]})


def camera(data: bytes) -> None:
    """An HTTP camera's response: head, chunked body, WWW-Authenticate, the image's bytes."""
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        resp = camera_http.parse_head(head + b"\r\n\r\n")
        camera_http.content_length(resp)
        camera_http.parse_challenges(resp.headers.get("www-authenticate", []))
    except camera_http.HttpError:
        pass
    try:
        camera_http.decode_chunked(body, 1 << 16)
    except camera_http.HttpError:
        pass
    try:
        camera_http.parse_challenges([data.decode("latin-1")])
    except camera_http.HttpError:
        pass
    try:
        camera_image.check(body or data, head.decode("latin-1")[:64] or None, ["image/jpeg", "image/png"], 1 << 20)
    except camera_image.ImageError:
        pass


@cache
def _registry() -> Any:
    from gateway.registry import Registry

    return Registry.discover()


def yaml_config(data: bytes) -> None:
    """A config file (a technician's edit, or a pushed one): YAML, schema, every driver's section."""
    try:
        load_config_bytes(data, _registry(), "fuzz.yaml")
    except ConfigInvalid:
        pass


def cose_sign1(data: bytes) -> None:
    """A COSE_Sign1 message: parsed, then checked against a key (must fail, never crash)."""
    try:
        msg = cose.parse_sign1(data)
    except cose.CoseError:
        return
    _ = msg.kid
    try:
        cose.verify(msg, OPS_KEY.public_key())
    except cose.CoseError:
        pass


def senml_pack(data: bytes) -> None:
    """A batch's SenML-CBOR payload: decoded and checked as the receiver does."""
    try:
        pack = cbor2.loads(data)
    except Exception:  # cbor2's own errors on garbage: the receiver refuses those as not CBOR
        return
    for check in (senml.decode_pack, senml.check_pack):
        try:
            check(pack, 1)
        except senml.SenmlError:
            pass


def remote_document(data: bytes) -> None:
    """A pushed config or a command: envelope (size, signer, signature, kind, target) and command body."""
    trusted = {key_id(OPS_KEY.public_key()): OPS_KEY.public_key()}
    for kind in ("config", "command"):
        try:
            signed = envelope.open_signed(data, trusted, kind,  # type: ignore[arg-type]
                                          {"gw-fuzz", envelope.group_target("all")}, 1 << 20)
        except envelope.Rejected:
            continue
        if kind == "command":
            from gateway.remote import commands

            commands.peek_id(signed.payload)
            try:
                commands.parse_command(signed.payload)
            except envelope.Rejected:
                pass


def receiver_batch(data: bytes) -> None:
    """The reference receiver fed one message, as from a broker: it answers, it never raises."""
    from gateway.receiver import KeyBindings, Receiver

    Receiver(KeyBindings({"gw-fuzz": [OPS_KEY.public_key()]})).feed(data)


GATEWAY_KEY = Ed25519PrivateKey(bytes(range(1, 33)))
"""The fuzzed gateway's current key: rotation seeds signed by it (and a next key) verify."""


def key_event(data: bytes) -> None:
    """A key message (rotation history, revocation, ops key event) as a receiver and a gateway take it."""
    from gateway.keyevents import EventRefused, OpsKeyring
    from gateway.receiver import KeyBindings, Receiver

    ops = {key_id(OPS_KEY.public_key()): OPS_KEY.public_key()}
    rx = Receiver(KeyBindings({"gw-fuzz": [GATEWAY_KEY.public_key()]}), ops_keys=OpsKeyring(ops))
    rx.feed_keys(data, "gw-fuzz")
    rx.feed_keys(data, None, ops=True)
    try:
        OpsKeyring(ops).take(data)
    except EventRefused:
        pass


TARGETS: dict[str, Target] = {
    "nmea": nmea, "modbus": modbus_reply, "rfid": rfid, "ble": ble_advert, "camera": camera,
    "yaml": yaml_config, "cose": cose_sign1, "senml": senml_pack, "remote": remote_document,
    "receiver": receiver_batch, "keyevent": key_event,
}
