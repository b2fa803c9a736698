"""The receiver's side of MQTT: its session settings and the topics it reads (docs/topics.md).

The receiver speaks MQTT 5 so it can tell the broker its Maximum Packet Size: a message larger
than any batch or blob chunk (junk, or an attack) is discarded by the broker instead of being
read into the receiver's memory. With a client id the session is persistent and never expires,
so the broker queues batches while the receiver is away.
"""

from __future__ import annotations

from typing import Any

from gateway.cose import MAX_MESSAGE
from gateway.mqtt import MqttSettings

MAX_PACKET = MAX_MESSAGE + 64 * 1024  # a batch message at its limit, plus topic and packet headers
NEVER_EXPIRES = 0xFFFFFFFF


def receiver_settings(url: str, client_id: str = "", **kw: Any) -> MqttSettings:
    """MqttSettings for a receiver: MQTT 5, the packet size limit, a persistent session with a client id."""
    return MqttSettings.from_url(url, client_id=client_id, protocol="5", persistent=bool(client_id),
                                 session_expiry=NEVER_EXPIRES, max_packet=MAX_PACKET, **kw)


def receiver_topics(prefix: str = "sensegate", blobs: bool = True, keys: bool = True,
                    revocations: bool = False) -> list[str]:
    """The topic filters a receiver subscribes to: every gateway's batches (and blob chunks), its
    retained key rotations, and with ``revocations`` (an ops trust anchor) the revocations of
    gateway keys and the rotations and revocations of ops keys (docs/topics.md)."""
    out = [f"{prefix}/+/batch"] + ([f"{prefix}/+/blob/+"] if blobs else [])
    if keys:
        out.append(f"{prefix}/+/keys")
    if revocations:
        out += [f"{prefix}/+/keys/revoked/+", f"{prefix}/ops/keys/+/+"]
    return out


def key_topic(topic: str) -> tuple[str, str] | None:
    """What a key topic is about: ("gateway", id) for ``<prefix>/<gw>/keys`` and
    ``<prefix>/<gw>/keys/revoked/<kid>``, ("ops", "") for ``<prefix>/ops/keys/<kid>/<event>``;
    None for any other topic."""
    levels = topic.split("/")
    if len(levels) >= 3 and levels[-1] == "keys":
        return "gateway", levels[-2]
    if len(levels) >= 5 and levels[-2] == "revoked" and levels[-3] == "keys":
        return "gateway", levels[-4]
    if len(levels) >= 5 and levels[-3] == "keys" and levels[-4] == "ops":
        return "ops", ""
    return None


def topic_gateway(topic: str) -> str:
    """The gateway part of ``<prefix>/<gateway>/batch``: the batch must claim that gateway."""
    levels = topic.split("/")
    return levels[-2] if len(levels) >= 3 else ""
