"""The opcua driver: asyncua's client on the host's loop, the node references of ``nodes`` and
the host contract.

Setup connects (with Basic256Sha256 Sign or SignAndEncrypt and the configured certificates when
asked), resolves browse paths to node ids, and creates one subscription for the points in
``subscribe`` mode. Data changes are queued by asyncua's publish task and handed to the host at
each poll with the server's source timestamps; polled points are read in one Read request.
asyncua never reconnects by itself here (``auto_reconnect`` off): a lost session fails the next
poll and the host reopens with backoff.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from asyncua import Client, Node, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from drivers.opcua import nodes
from drivers.opcua.config import OpcUaConfig
from drivers.pending import Pending
from gateway.driver_api import ConfigError, Driver, DriverContext, Emit, NotReady, PollError, Quality, Value

MODES = {"sign": ua.MessageSecurityMode.Sign, "sign_and_encrypt": ua.MessageSecurityMode.SignAndEncrypt}


def _quality(status: Any) -> Quality:
    """OPC UA status code severity (top two bits) -> reading quality."""
    code = int(getattr(status, "value", 0) or 0)
    severity = code >> 30
    return Quality.GOOD if severity == 0 else Quality.UNCERTAIN if severity == 1 else Quality.BAD


def _ts(value: Any) -> int | None:
    stamp = getattr(value, "SourceTimestamp", None) or getattr(value, "ServerTimestamp", None)
    if isinstance(stamp, dt.datetime) and stamp.year > 1601:
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=dt.UTC)
        return int(stamp.timestamp() * 1e9)
    return None


def _missing(files: dict[str, str]) -> str:
    """The first configured certificate/key file that is not there, as "option path"; "" if none."""
    return next((f"{what} {path}" for what, path in files.items() if path and not Path(path).is_file()), "")


class _Changes(Pending[tuple[str, Any, int]]):
    """asyncua's subscription handler: queues data changes (bounded) for the next poll."""

    def datachange_notification(self, node: Node, _val: Any, data: Any) -> None:
        self.add((node.nodeid.to_string(), data.monitored_item.Value, time.time_ns()))

    def status_change_notification(self, status: Any) -> None:
        """The server ended the subscription; the next poll notices the session state."""


class OpcUaDriver(Driver):
    """Reads one OPC UA server; ``write("<point>", value)`` writes a writable variable."""

    config: OpcUaConfig

    def __init__(self, config: OpcUaConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self.specs = [p.spec() for p in config.points]
        self._client: Client | None = None
        self._node_of: dict[str, Node] = {}  # point name -> node
        self._by_node: dict[str, list[nodes.PointSpec]] = {}  # node id -> subscribed points
        self._changes = _Changes(config.max_pending)
        self._lost: Exception | None = None
        self._variant: dict[str, ua.VariantType] = {}
        self.bad_values = 0

    async def setup(self) -> None:
        c = self.config
        client = Client(c.url, timeout=c.request_timeout, watchdog_intervall=max(1.0, c.interval))
        client.application_uri = c.application_uri
        client.connection_lost_callback = self._on_lost
        if c.username:
            client.set_user(c.username)
            client.set_password(c.password)
        if c.security != "none":
            files = {
                "certificate": c.certificate,
                "private_key": c.private_key,
                "server_certificate": c.server_certificate,
            }
            missing = await self.ctx.run_blocking(_missing, files)
            if missing:
                raise ConfigError(f"{missing}: no such file")
            try:
                await client.set_security(
                    SecurityPolicyBasic256Sha256,
                    c.certificate,
                    c.private_key,
                    server_certificate=c.server_certificate or None,
                    mode=MODES[c.security],
                )
            except ValueError as e:
                raise ConfigError(f"cannot use the certificate or key: {e}") from e
        self._client = client
        try:
            await client.connect()
        except (OSError, TimeoutError, ConnectionError) as e:
            raise NotReady(f"cannot connect to {c.url}: {e or type(e).__name__}") from e
        except ua.UaError as e:
            raise NotReady(f"{c.url} refused the session: {e}") from e
        await self._resolve(client)
        subscribed = [s for s in self.specs if s.mode == "subscribe"]
        if subscribed:
            sub = await client.create_subscription(c.publishing_interval * 1000, self._changes)
            unique = list(dict.fromkeys(self._node_of[s.name].nodeid.to_string() for s in subscribed))
            for s in subscribed:
                self._by_node.setdefault(self._node_of[s.name].nodeid.to_string(), []).append(s)
            handles = await sub.subscribe_data_change([client.get_node(n) for n in unique])
            for node_id, h in zip(unique, handles if isinstance(handles, list) else [handles], strict=True):
                if not isinstance(h, int):
                    raise NotReady(f"cannot subscribe to {node_id}: {h}")

    async def _resolve(self, client: Client) -> None:
        for s in self.specs:
            if s.node_id:
                self._node_of[s.name] = client.get_node(s.node_id)
                continue
            try:
                self._node_of[s.name] = await client.nodes.objects.get_child(nodes.parse_browse_path(s.browse_path))
            except ua.UaStatusCodeError as e:
                raise NotReady(f"point {s.name}: browse path {s.browse_path} not found on the server ({e})") from e

    async def _on_lost(self, exc: Exception) -> None:
        self._lost = exc

    async def poll(self, emit: Emit) -> None:
        client = self._client
        if client is None:
            raise PollError("not set up")
        self._drain(emit)
        if self._lost is not None:
            raise PollError(f"session to {self.config.url} lost: {self._lost or type(self._lost).__name__}")
        polled = [s for s in self.specs if s.mode == "poll"]
        if not polled:
            return
        try:
            values = await client.read_attributes([self._node_of[s.name] for s in polled])
        except (OSError, TimeoutError, ConnectionError, ua.UaError) as e:
            raise PollError(f"read from {self.config.url} failed: {e or type(e).__name__}") from e
        for s, dv in zip(polled, values, strict=True):
            self._emit(emit, s, dv, None)

    def _emit(self, emit: Emit, s: nodes.PointSpec, dv: Any, arrived: int | None) -> None:
        quality = _quality(getattr(dv, "StatusCode", None))
        variant = getattr(dv, "Value", None)
        try:
            value = nodes.convert(s, getattr(variant, "Value", None))
        except nodes.BadValue as e:
            self.bad_values += 1
            self.ctx.log.debug("%s", e)
            return
        emit(s.name, value, unit=s.unit, ts_ns=_ts(dv) or arrived, quality=quality)

    def _drain(self, emit: Emit) -> None:
        self._changes.report(self.ctx.log, emit, "opcua.changes_dropped", "data change(s)", "max_pending")
        for node_id, dv, arrived in self._changes.drain():
            for s in self._by_node.get(node_id, ()):
                self._emit(emit, s, dv, arrived)

    async def write(self, point: str, value: Value) -> None:
        """Write a ``writable`` point (in reading units: scaled back, bounded by min/max)."""
        spec = next((s for s in self.specs if s.name == point), None)
        if spec is None:
            raise ConfigError(f"no point {point!r}")
        if not spec.writable:
            raise ConfigError(f"point {point} is not writable")
        try:
            raw = nodes.check_write(spec, value)
        except ValueError as e:
            raise ConfigError(f"write to {point} refused: {e}") from e
        node = self._node_of.get(point)
        if node is None or self._client is None:
            raise PollError("not connected")
        try:
            vtype = self._variant.get(point) or await node.read_data_type_as_variant_type()
            self._variant[point] = vtype
            if vtype in (ua.VariantType.Float, ua.VariantType.Double) and not isinstance(raw, str):
                raw = float(raw)
            elif vtype.name.startswith(("Int", "UInt", "SByte", "Byte")) and not isinstance(raw, bool | str):
                raw = round(raw)
            await node.write_value(ua.DataValue(ua.Variant(raw, vtype)))
        except ua.UaStatusCodeError as e:
            raise PollError(f"server refused the write to {point}: {e}") from e
        except (OSError, TimeoutError, ConnectionError) as e:
            raise PollError(f"write to {point} failed: {e or type(e).__name__}") from e
        except (ValueError, TypeError, OverflowError) as e:
            raise ConfigError(f"write to {point} refused: {value!r} does not fit {vtype.name}") from e

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.disconnect()
            except Exception:  # a dead session: drop the socket
                client.disconnect_socket()
