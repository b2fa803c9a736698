"""MQTT for drivers that subscribe to a broker (ChirpStack, zigbee2mqtt, push ingest): a host service.

Drivers do not bring an MQTT client of their own: this wraps the host's paho session
(``gateway.mqtt.MqttSession``, driven from the event loop) in the driver lifecycle.
``connect()`` belongs in ``setup`` (it raises ``NotReady`` with the reason in plain words),
``start(filters)`` in ``run`` once ``emit`` is there (messages a persistent session delivers
before that are held, within a bound, and handed over then), ``wait_lost()`` ends ``run`` with
``PollError`` when the connection drops (the host closes, backs off and sets up again), and
``publish()`` serves ``write`` (it returns once the broker acknowledged, QoS 1).
``BrokerOptions`` is the option group a driver's schema embeds as ``broker:``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from gateway.config.schema import TlsOptions
from gateway.driver_api import NotReady, PollError
from gateway.mqtt import MqttError, MqttSession, MqttSettings
from gateway.schema import Field, Model, model_validator
from gateway.units import Duration

OnMessage = Callable[[str, bytes, bool], None]  # topic, payload, retained


class BrokerOptions(Model):
    """Where a driver's broker is and how to log in (the same options as an MQTT uplink)."""

    url: str = Field(
        default="mqtt://127.0.0.1:1883",
        pattern=r"^mqtts?://[^/\s]+(:\d+)?/?$",
        description="Broker, as mqtt://HOST:PORT or mqtts://HOST:PORT (TLS).",
    )
    protocol: Literal["3.1.1", "5"] = Field(default="5", description="MQTT protocol version.")
    client_id: str = Field(
        default="", max_length=128, description="MQTT client id; default sensegate-<instance>-<random>."
    )
    username: str = Field(default="", description="User name for the broker.")
    password: str = Field(default="", description="Password; prefer password_file.")
    password_file: str = Field(default="", description="File holding the password.")
    tls: TlsOptions | None = Field(default=None, description="TLS settings (for mqtts://).")
    keepalive: Duration = Field(default=30.0, ge=5, le=3600, description="MQTT keepalive.")
    persistent: bool = Field(
        default=False,
        description="Keep the session on the broker while the gateway is away (needs client_id): "
        "QoS 1 messages published meanwhile are delivered on return.",
    )

    @model_validator(mode="after")
    def _persistent_needs_id(self) -> BrokerOptions:
        if self.persistent and not self.client_id:
            raise ValueError("persistent: true needs a fixed client_id (the broker keeps the session under it)")
        return self


class BrokerClient:
    """One driver instance's connection: subscribe, hand messages to a callback, publish."""

    MAX_EARLY = 10_000  # messages held between connect() and start() (persistent session backlog)

    def __init__(self, options: BrokerOptions, instance: str, on_message: OnMessage, log: logging.Logger) -> None:
        self.options = options
        self._on_message = on_message
        self._log = log
        password = options.password
        self._password_file = options.password_file
        self._settings_kw: dict[str, Any] = {
            "ca_file": options.tls.ca_file if options.tls else "",
            "cert_file": options.tls.cert_file if options.tls else "",
            "key_file": options.tls.key_file if options.tls else "",
            "insecure": options.tls.insecure if options.tls else False,
            "username": options.username,
            "password": password,
            "client_id": options.client_id or f"sensegate-{instance}-{id(self) & 0xFFFFFF:06x}",
            "protocol": options.protocol,
            "keepalive": int(options.keepalive),
            "persistent": options.persistent,
        }
        self._session: MqttSession | None = None
        self._started = False
        self._early: deque[tuple[str, bytes, bool]] = deque()
        self.early_dropped = 0
        self._acks: dict[int, asyncio.Future[None]] = {}

    @property
    def where(self) -> str:
        return self.options.url

    async def connect(self, within: float = 10.0) -> None:
        """Connect (from ``setup``); ``NotReady`` naming the reason when the broker cannot be reached."""
        kw = dict(self._settings_kw)
        if self._password_file:
            try:
                kw["password"] = (await asyncio.to_thread(Path(self._password_file).read_text)).strip()
            except OSError as e:
                raise NotReady(f"cannot read password_file {self._password_file}: {e.strerror or e}") from e
        try:
            settings = MqttSettings.from_url(self.options.url, **kw)
        except MqttError as e:
            raise NotReady(str(e)) from e
        session = MqttSession(settings, on_message=self._message, on_publish=self._published)
        try:
            await session.connect(within)
        except MqttError as e:
            raise NotReady(f"broker {self.options.url}: {e}") from e
        self._session = session

    def start(self, topic_filters: list[str], qos: int = 1) -> None:
        """Subscribe (from ``run``) and hand over what arrived since ``connect``."""
        session = self._require()
        for topic_filter in topic_filters:
            session.client.subscribe(topic_filter, qos=qos)
        self._started = True
        while self._early:
            self._deliver(*self._early.popleft())

    async def wait_lost(self) -> None:
        """Return never; raise ``PollError`` when the connection is lost."""
        session = self._require()
        await session.closed.wait()
        raise PollError(f"broker {self.options.url}: connection lost ({session.close_reason or 'socket closed'})")

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish and wait for the broker's acknowledgement (QoS 1); ``PollError`` when not connected."""
        session = self._session
        if session is None or session.closed.is_set():
            raise PollError(f"broker {self.options.url}: not connected")
        info = session.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != 0:
            raise PollError(f"broker {self.options.url}: publish to {topic} failed (paho rc {info.rc})")
        if qos == 0:
            return
        # the PUBACK is read by the loop's socket callback, so it cannot arrive before this
        fut = self._acks[info.mid] = asyncio.get_running_loop().create_future()
        lost = asyncio.ensure_future(session.closed.wait())
        try:
            await asyncio.wait({fut, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            self._acks.pop(info.mid, None)
        if not fut.done():
            raise PollError(f"broker {self.options.url}: connection lost before it acknowledged {topic}")

    async def close(self) -> None:
        """Disconnect; safe to call twice."""
        session, self._session = self._session, None
        self._started = False
        self._early.clear()
        for fut in self._acks.values():
            fut.cancel()
        self._acks.clear()
        if session is not None:
            await session.close()

    def _require(self) -> MqttSession:
        if self._session is None:
            raise PollError(f"broker {self.options.url}: not connected")
        return self._session

    def _published(self, mid: int) -> None:
        fut = self._acks.get(mid)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _message(self, msg: Any) -> None:
        topic, payload, retained = str(msg.topic), bytes(msg.payload), bool(msg.retain)
        if not self._started:
            if len(self._early) >= self.MAX_EARLY:
                self.early_dropped += 1
                return
            self._early.append((topic, payload, retained))
            return
        self._deliver(topic, payload, retained)

    def _deliver(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            self._on_message(topic, payload, retained)
        except Exception:  # a driver bug must not take the connection down: log with the trace
            self._log.exception("handling a message on %s failed", topic)
