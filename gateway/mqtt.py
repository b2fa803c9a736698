"""paho-mqtt driven from the asyncio loop (no paho thread), shared by the uplink and receiver.

The blocking part of a connection (DNS, TCP connect, TLS handshake, sending CONNECT) runs in
the default executor; from then on the socket is watched with ``loop.add_reader`` /
``add_writer`` and paho's ``loop_misc`` runs once a second for keepalive. One paho client is
used per connection, so nothing from a dead connection is re-sent behind our back.

Topic layout (also in docs/topics.md): ``<prefix>/<gateway>/batch``, ``.../status``,
``.../nodes/<node>/status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho  # its urllib.request import is deferred: see gateway/__init__.py
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

if TYPE_CHECKING:
    from gateway.config.schema import MqttUplink as MqttUplinkConfig
    from gateway.scheduler import Backoff

log = logging.getLogger("sensegate.mqtt")


class MqttError(Exception):
    """A connection could not be made or was refused; the message says why in plain words."""

    def __init__(self, message: str, refused: int = 0) -> None:
        super().__init__(message)
        self.refused = refused  # the broker's CONNACK reason code when it said no (MQTT 5 numbering)


def batch_topic(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/batch"


def status_topic(prefix: str, gateway: str) -> str:
    return f"{prefix}/{gateway}/status"


def health_topic(prefix: str, gateway: str) -> str:
    """Retained: the last signed health summary (not overwritten by the last will)."""
    return f"{prefix}/{gateway}/health"


def keys_topic(prefix: str, gateway: str) -> str:
    """Retained: the gateway's latest device key rotations (gateway/keyevents.py)."""
    return f"{prefix}/{gateway}/keys"


def node_topic(prefix: str, gateway: str, node: str) -> str:
    return f"{prefix}/{gateway}/nodes/{node}/status"


@dataclass(frozen=True)
class MqttSettings:
    """Where and how to connect."""

    host: str
    port: int
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    insecure: bool = False
    username: str = ""
    password: str = ""
    client_id: str = ""
    protocol: str = "5"
    keepalive: int = 30
    persistent: bool = False  # keep the session (and queued QoS 1 messages) across reconnects
    session_expiry: int = 3600  # MQTT 5: how long (s) the broker keeps a persistent session; 0xFFFFFFFF: for ever
    # MQTT 5 Maximum Packet Size: the broker never sends this client a larger packet (it discards
    # it as delivered), so a huge message cannot be read into memory here; 0: no limit
    max_packet: int = 0

    @classmethod
    def for_uplink(cls, cfg: MqttUplinkConfig, gateway_id: str, client_id: str = "", **kw: Any) -> MqttSettings:
        """What an ``uplinks:`` entry of type mqtt connects with (the uplink, and doctor's check);
        ``kw``: further settings. Reads ``password_file`` (OSError when it cannot)."""
        password = cfg.password
        if cfg.password_file:
            password = Path(cfg.password_file).read_text().strip()
        tls = cfg.tls
        return cls.from_url(
            cfg.url,
            ca_file=tls.ca_file if tls else "",
            cert_file=tls.cert_file if tls else "",
            key_file=tls.key_file if tls else "",
            insecure=tls.insecure if tls else False,
            username=cfg.username,
            password=password,
            client_id=client_id or cfg.client_id or f"sensegate-{gateway_id}",
            protocol=cfg.protocol,
            keepalive=int(cfg.keepalive),
            **kw,
        )

    @classmethod
    def from_url(cls, url: str, **kw: Any) -> MqttSettings:
        """Parse mqtt://host:port or mqtts://host:port."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise MqttError(f"{url!r} is not an mqtt:// or mqtts:// URL")
        tls = parts.scheme == "mqtts"
        return cls(host=parts.hostname, port=parts.port or (8883 if tls else 1883), tls=tls, **kw)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine (localhost, 127.0.0.0/8, ::1), without resolving names."""
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def insecurities(s: MqttSettings) -> list[tuple[str, str]]:
    """What makes a connection open to eavesdropping or impersonation: (warning, fix) pairs.

    Shared by the uplink (logged once at start) and ``sensegate doctor`` (a finding each).
    """
    where = f"{s.host}:{s.port}"
    out: list[tuple[str, str]] = []
    if not s.tls and not is_loopback(s.host):
        out.append((f"plain mqtt:// to {where}, which is not this machine: readings, status and the ops "
                    "commands and config pushes are readable and the broker's identity is not checked",
                    "use mqtts:// with the broker's CA (sensegate provision --ca BROKER-CA.pem)"))
    if s.tls and s.insecure:
        out.append((f"tls.insecure is set for {where}: the broker's host name is not checked, so any "
                    "certificate from that CA (another gateway's, say) can pose as the broker",
                    "remove tls.insecure and use the host name the broker's certificate was made for"))
    return out


class TlsFileError(OSError):
    """A TLS file the settings name is missing or unreadable (ssl itself says only "No such file or directory")."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(f"{problem}: {fix}")
        self.problem, self.fix = problem, fix


def check_tls_files(ca_file: str, cert_file: str, key_file: str) -> None:
    """Raise TlsFileError naming the first TLS file that is missing or unreadable, and its fix."""
    for path, what, fix in (
        (ca_file, "the broker's CA file", "install the CA that signed the broker's certificate: "
                                          "sudo sensegate provision --ca BROKER-CA.pem"),
        (cert_file, "the client certificate", "make a CSR with sudo sensegate provision --csr, have the broker's CA "
                                              "sign it and put the certificate there"),
        (key_file, "the client key", "sudo sensegate provision --csr makes it (with the CSR)"),
    ):
        if not path:
            continue
        if not os.path.exists(path):
            raise TlsFileError(f"{what} {path} does not exist (uplinks[].tls)", fix)
        if not os.access(path, os.R_OK):
            raise TlsFileError(f"{what} {path} cannot be read by this user", f"ls -l {path}; it must be readable "
                               "by the service user")


def _describe_connect_error(e: BaseException, s: MqttSettings) -> str:
    where = f"{s.host}:{s.port}"
    if isinstance(e, TlsFileError):
        return str(e)
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate at {where} is not trusted ({e.verify_message}); check ca_file"
    if isinstance(e, ssl.SSLError):
        return f"TLS handshake with {where} failed ({e.reason or e}); check certificates and that the port speaks TLS"
    if isinstance(e, ConnectionRefusedError):
        return f"connection refused by {where} (is the broker running on that port?)"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve {s.host!r} ({e.strerror})"
    if isinstance(e, TimeoutError | socket.timeout):
        return f"timed out connecting to {where}"
    if isinstance(e, OSError):
        return f"cannot connect to {where}: {e.strerror or e}"
    return f"{type(e).__name__}: {e}"


def _close_sockets_in(e: BaseException) -> None:
    """Close sockets a failed connect left in its frames (paho drops a failed TLS socket unclosed)."""
    tb = e.__traceback__
    while tb is not None:
        for value in list(tb.tb_frame.f_locals.values()):
            if isinstance(value, socket.socket):
                with contextlib.suppress(OSError):
                    value.close()
        tb = tb.tb_next


class MqttSession:
    """One live connection. Create, ``await connect()``, use ``client``, ``await close()``."""

    def __init__(
        self,
        settings: MqttSettings,
        will: tuple[str, bytes] | None = None,
        on_message: Callable[[paho.MQTTMessage], None] | None = None,
        on_publish: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        proto = paho.MQTTv5 if settings.protocol == "5" else paho.MQTTv311
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=proto,
            clean_session=None if proto == paho.MQTTv5 else not settings.persistent,
        )
        if settings.username:
            self.client.username_pw_set(settings.username, settings.password or None)
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        if on_message is not None:
            self.client.on_message = lambda c, u, msg: on_message(msg)
        if on_publish is not None:
            self.client.on_publish = lambda c, u, mid, rc, props: on_publish(mid)
        self.client.on_subscribe = self._on_subscribe
        self.closed = asyncio.Event()
        self.close_reason = ""
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._subacks: dict[int, asyncio.Future[None]] = {}
        self._sock: Any = None
        self._fd = -1
        self._misc: asyncio.Task[None] | None = None
        self._loop = asyncio.get_running_loop()

    def _tls(self) -> None:
        s = self.settings
        check_tls_files(s.ca_file, s.cert_file, s.key_file)
        ctx = ssl.create_default_context(cafile=s.ca_file or None)
        if s.cert_file:
            ctx.load_cert_chain(s.cert_file, s.key_file or None)
        if s.insecure:
            ctx.check_hostname = False
        self.client.tls_set_context(ctx)

    def _blocking_connect(self) -> None:
        if self.settings.tls:
            self._tls()
        s = self.settings
        if s.protocol == "5":
            props = None
            if s.persistent or s.max_packet:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                if s.persistent:
                    props.SessionExpiryInterval = s.session_expiry
                if s.max_packet:
                    props.MaximumPacketSize = s.max_packet
            self.client.connect(s.host, s.port, keepalive=s.keepalive, clean_start=not s.persistent,
                                properties=props)
        else:
            self.client.connect(s.host, s.port, keepalive=s.keepalive)

    async def connect(self, within: float = 10.0) -> None:
        """Connect and wait for CONNACK; raise MqttError with a plain-words reason."""
        self._connack = self._loop.create_future()
        blocking = self._loop.run_in_executor(None, self._blocking_connect)
        try:
            async with asyncio.timeout(within):
                await asyncio.shield(blocking)
        except (OSError, ssl.SSLError, ValueError, TimeoutError) as e:
            _close_sockets_in(e)
            self._connack.cancel()
            self._detach()
            blocking.add_done_callback(lambda f: self._drop_socket())  # a connect that finishes late
            raise MqttError(_describe_connect_error(e, self.settings)) from None
        except asyncio.CancelledError:  # the uplink is being stopped (reload, rollback, shutdown)
            self._connack.cancel()
            blocking.add_done_callback(lambda f: self._drop_socket())
            raise
        self._attach()
        try:
            async with asyncio.timeout(within):
                rc = await self._connack
        except TimeoutError:
            await self.close()
            raise MqttError(f"no CONNACK from {self.settings.host}:{self.settings.port} within {within:g}s") from None
        except asyncio.CancelledError:  # stopped while waiting: leave no socket or keepalive task
            self._drop_socket()
            raise
        except MqttError:
            await self.close()
            raise
        if rc.is_failure:
            await self.close()
            raise MqttError(f"broker refused the connection: {rc}", refused=rc.value)

    def _attach(self) -> None:
        c = self.client
        self._sock = c.socket()
        if self._sock is None:
            raise MqttError("connection closed during connect")
        self._fd = self._sock.fileno()  # the loop's registrations are by this number, valid after a close
        c.on_socket_close = lambda cl, u, sock: self._detach()
        c.on_socket_register_write = lambda cl, u, sock: self._loop.add_writer(sock, self._write)
        c.on_socket_unregister_write = self._unregister_write
        self._loop.add_reader(self._sock, self._read)
        if c.want_write():
            self._loop.add_writer(self._sock, self._write)
        if self._misc is not None:
            self._misc.cancel()
        self._misc = asyncio.create_task(self._misc_loop(), name="mqtt-misc")

    def _unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        # paho may hand over a socket already closed (fd -1): an error here would leave paho's
        # _sock_close before it calls on_socket_close, and the session would never learn it closed
        if sock is self._sock and self._fd >= 0:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self._loop.remove_writer(self._fd)

    def _read(self) -> None:
        self.client.loop_read()

    def _write(self) -> None:
        self.client.loop_write()

    def _drop_socket(self) -> None:
        """Close the client's socket without a DISCONNECT and detach (no awaiting: safe when cancelled)."""
        sock = self.client.socket()
        self._detach()  # first: the loop forgets the socket while its number is still ours
        if sock is not None:
            with contextlib.suppress(Exception):
                sock.close()

    def _detach(self) -> None:
        # also reached from paho's __del__ when a client is collected, possibly with no loop running
        if self._sock is not None:
            if self._fd >= 0:  # by number: a closed socket object says -1, and its registrations would stay
                with contextlib.suppress(ValueError, OSError, RuntimeError):
                    self._loop.remove_reader(self._fd)
                with contextlib.suppress(ValueError, OSError, RuntimeError):
                    self._loop.remove_writer(self._fd)
            self._sock = None
            self._fd = -1
        if self._misc is not None and self._misc is not asyncio.current_task(self._loop):
            with contextlib.suppress(RuntimeError):  # its loop is already closed
                self._misc.cancel()
        self._misc = None
        if not self.closed.is_set():
            self.closed.set()
        for fut in self._subacks.values():  # no SUBACK comes on a closed connection
            if not fut.done():
                with contextlib.suppress(RuntimeError):  # its loop is already closed
                    fut.set_result(None)
        self._subacks.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttError(self.close_reason or "connection closed before CONNACK"))

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.client.loop_misc() != paho.MQTT_ERR_SUCCESS:
                self._detach()
                return

    def _on_subscribe(self, c: Any, u: Any, mid: int, codes: Any, props: Properties | None) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def subscribe_each(self, topic_filters: Iterable[str], qos: int = 0, within: float = 10.0) -> bool:
        """Subscribe to one filter at a time, each once the broker acknowledged the one before.

        A broker queues a subscription's retained messages for the client at once and drops what
        passes its queue limit (mosquitto's max_queued_messages, 1000 by default: QoS 1 messages
        queued beyond those in flight, or QoS 0 packets not yet written), so a reader of several
        kinds of retained message from 500 gateways would lose some if it subscribed to all at
        once. Mosquitto queues a SUBSCRIBE's retained messages before its SUBACK: at QoS 0 the
        SUBACK also marks the end of that filter's burst. False if one was not acknowledged in time.
        """
        for topic_filter in topic_filters:
            rc, mid = self.client.subscribe(topic_filter, qos=qos)
            if rc != paho.MQTT_ERR_SUCCESS or mid is None:
                return False
            fut = self._subacks[mid] = self._loop.create_future()
            try:
                async with asyncio.timeout(within):
                    await fut
            except TimeoutError:
                self._subacks.pop(mid, None)
                return False
            if self.closed.is_set():
                return False
        return True

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: ReasonCode, props: Properties | None) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(rc)

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: ReasonCode, props: Properties | None) -> None:
        self.close_reason = str(rc)
        self._detach()

    async def close(self, graceful: bool = True, within: float = 1.0) -> None:
        """Disconnect (sending DISCONNECT when graceful, so no last will is published); a graceful
        close waits up to ``within`` seconds for what is queued to go out and the broker to close."""
        misc = self._misc
        try:
            if graceful and self._sock is not None:
                await self._disconnect(within)
        finally:  # also when cancelled: no socket, registration or keepalive task is left behind
            self._drop_socket()
            if misc is not None:
                misc.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await misc

    async def _disconnect(self, within: float) -> None:
        """Send what is queued, then DISCONNECT, then read until the broker closes (bounded).

        paho closes its socket as soon as the DISCONNECT is written, while the broker is still
        answering the last publishes (the farewell heartbeat's PUBACKs). The kernel answers those
        with a reset, and mosquitto, failing to write a PUBACK, drops the client before reading the
        DISCONNECT it already holds (it logs "disconnected due to out of memory": its PUBACK
        failure code is MOSQ_ERR_NOMEM's 1) and publishes the last will over the final status. A
        second descriptor keeps the connection open, our side half-closed, until the broker's end."""
        try:
            keep: socket.socket | None = socket.socket(fileno=os.dup(self._fd))
        except OSError:
            keep = None
        try:
            try:
                queued = self.client.disconnect() == paho.MQTT_ERR_SUCCESS  # the loop's writer sends it after the rest
            except Exception:  # paho's or the loop's: the close goes on without it
                queued = False
            if not queued:
                return
            async with asyncio.timeout(within):
                await self.closed.wait()  # paho closed its socket once the DISCONNECT was written
                if keep is not None:
                    keep.setblocking(False)
                    keep.shutdown(socket.SHUT_WR)
                    while await self._loop.sock_recv(keep, 65536):
                        pass  # the broker's last answers, unread by anyone: its close follows
        except (TimeoutError, OSError):
            pass  # a broker that does not close: ours closes now all the same
        finally:
            if keep is not None:
                keep.close()


async def connect_retrying(make: Callable[[], MqttSession], backoff: Backoff,
                           on_error: Callable[[MqttError], None] | None = None) -> MqttSession:
    """A connected session: each try a new one from ``make``, waiting ``backoff`` between tries
    (each failure given to ``on_error``); the backoff is reset once the broker takes one."""
    while True:
        session = make()
        try:
            await session.connect()
        except MqttError as e:
            if on_error is not None:
                on_error(e)
            await asyncio.sleep(backoff.next())
            continue
        backoff.reset()
        return session


async def subscribe_forever(
    settings: MqttSettings,
    topic_filters: list[str],
    on_message: Callable[[paho.MQTTMessage], None],
    connected: asyncio.Event | None = None,
    on_error: Callable[[MqttError], None] | None = None,
    backoff: tuple[float, float] = (0.2, 10.0),
    qos: int = 1,
) -> None:
    """Stay subscribed until cancelled: connect, subscribe (QoS 1 unless told), reconnect with backoff.

    Shared by the reference receiver, the test kit and the rig; ``connected`` is set while a
    session is up.
    """
    from gateway.scheduler import Backoff

    wait = Backoff(*backoff)
    while True:
        session = await connect_retrying(lambda: MqttSession(settings, on_message=on_message), wait, on_error)
        try:
            await session.subscribe_each(topic_filters, qos)
            if connected is not None:
                connected.set()
            await session.closed.wait()
        finally:
            if connected is not None:
                connected.clear()
            await session.close()
