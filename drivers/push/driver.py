"""The push driver: devices that push readings (SenML over HTTP or MQTT, plain values over MQTT).

setup() opens the HTTP endpoint and/or connects to the broker (NotReady naming the address
when it cannot); run() subscribes and waits. Every pack is checked whole (SenML rules, names,
node allow-list, times, rate) before any of it is emitted, so a device can send a refused pack
again; refusals are a clear 4xx with a JSON reason over HTTP and a counted, once-logged drop
over MQTT. Readings enter through emit like any driver's: numbered, buffered and signed the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hmac
import json
import math
import re
import time
from collections import OrderedDict
from pathlib import Path as FilePath
from types import ModuleType
from typing import TYPE_CHECKING, Any

from paho.mqtt.client import topic_matches_sub

from drivers.push import senml
from drivers.push.config import PushConfig, Subscription
from gateway.broker import BrokerClient
from gateway.driver_api import Driver, DriverContext, Emit, MissingExtra, NotReady, PollError, Quality
from gateway.logs import LogOnce

if TYPE_CHECKING:
    from drivers.push.httpd import HttpServer, Request, Response

# the host's rules for names (gateway/scheduler.py): a point is a SenML name, a node a bit narrower
_POINT_RE = re.compile(r"^[A-Za-z0-9][-:./_A-Za-z0-9]{0,254}$")
_NODE_RE = re.compile(r"^[A-Za-z0-9][-:._A-Za-z0-9]{0,127}$")
_TEMPLATE_RE = re.compile(r"\{(\d+)\}")
MEDIA_TYPES = {"application/senml+json": "json", "application/senml+cbor": "cbor"}

Reading = tuple[str, str, Any, str | None, int]  # node, point, value, unit, ts_ns


class Refused(Exception):
    """A pack or message not taken: the HTTP status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class PushDriver(Driver):
    """An HTTP endpoint and/or MQTT subscriptions for devices that push."""

    config: PushConfig

    def __init__(self, config: PushConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self._emit: Emit | None = None
        self._http: HttpServer | None = None
        self._httpd: ModuleType | None = None  # drivers.push.httpd, imported when http is configured
        self._client: BrokerClient | None = None
        self._token: bytes | None = None
        self._nodes: OrderedDict[str, float] = OrderedDict()  # node -> monotonic time last heard
        self._online: set[str] = set()
        self._tokens = float(config.max_records)  # rate limit: a token bucket of records
        self._refilled = time.monotonic()
        self._report_once = LogOnce(ctx.log)

    # -- lifecycle --------------------------------------------------------------------------

    async def setup(self) -> None:
        http = self.config.http
        if http is not None:
            if http.token_file:
                try:
                    text = await self.ctx.run_blocking(FilePath(http.token_file).read_text)
                except OSError as e:
                    raise NotReady(f"cannot read token_file {http.token_file}: {e.strerror or e}") from e
                self._token = text.strip().encode()
            try:
                from drivers.push import httpd  # needs h11, the extra that brings the HTTP parser
            except ImportError as e:
                raise MissingExtra("push", "h11", "push") from e
            self._httpd = httpd
            host, port = http.host_port
            server = httpd.HttpServer(
                self._http_request,
                host,
                port,
                max_body=int(http.max_body),
                timeout=http.timeout,
                max_connections=http.max_connections,
                on_refusal=self._http_refused,
            )
            try:
                await server.start()
            except OSError as e:
                raise NotReady(f"cannot listen on {http.listen}: {e.strerror or e}") from e
            self._http = server
        if self.config.mqtt is not None:
            self._client = BrokerClient(self.config.mqtt.broker, self.ctx.instance, self._mqtt_message, self.ctx.log)
            await self._client.connect()

    @property
    def http_port(self) -> int | None:
        """The port the endpoint listens on (handy with port 0)."""
        return self._http.port if self._http is not None else None

    async def run(self, emit: Emit) -> None:
        self._emit = emit
        lost: asyncio.Future[None] | None = None
        if self._client is not None and self.config.mqtt is not None:
            self._client.start([s.topic for s in self.config.mqtt.subscriptions])
            lost = asyncio.ensure_future(self._client.wait_lost())
        forever = asyncio.get_running_loop().create_future()
        try:
            while True:
                done, _ = await asyncio.wait({lost or forever}, timeout=self._next_offline())
                if done and lost is not None:
                    lost.result()  # raises PollError
                self._sweep()
        finally:
            forever.cancel()
            if lost is not None:
                lost.cancel()
                with contextlib.suppress(asyncio.CancelledError, PollError):
                    await lost

    async def close(self) -> None:
        self._emit = None
        http, self._http = self._http, None
        if http is not None:
            await http.close()
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    # -- HTTP -------------------------------------------------------------------------------

    def _http_refused(self, status: int) -> None:
        self.ctx.count(f"http_rejected_{status}")

    def _http_request(self, req: Request) -> Response:
        http, httpd = self.config.http, self._httpd
        assert http is not None and httpd is not None
        try:
            if req.target.split("?", 1)[0] != http.path:
                raise Refused(404, f"nothing here; POST SenML to {http.path}")
            if req.method != "POST":
                raise Refused(405, "POST a SenML pack")
            if self._token is not None:
                auth = req.headers.get("authorization", "")
                given = auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""
                if not hmac.compare_digest(given, self._token):
                    raise Refused(401, "a valid bearer token is needed (Authorization: Bearer ...)")
            media = req.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            fmt = MEDIA_TYPES.get(media)
            if fmt is None:
                raise Refused(415, f"content type {media[:60] or '(none)'!r}; send {' or '.join(MEDIA_TYPES)}")
            if self._emit is None:
                raise Refused(503, "starting; try again shortly")
            readings = self._from_senml(req.body, fmt, default_node="")
            self._take(readings)
        except Refused as e:
            self.ctx.count(f"http_rejected_{e.status}")
            self._report_once(
                req.peer.rsplit(":", 1)[0], f"http:{e.status}", f"push from {req.peer} refused ({e.status}): {e}"
            )
            extra: tuple[tuple[str, str], ...] = ()
            if e.status == 405:
                extra = (("allow", "POST"),)
            elif e.status == 401:
                extra = (("www-authenticate", 'Bearer realm="sensegate"'),)
            elif e.status in (429, 503):
                extra = (("retry-after", "1"),)
            return httpd.Response.error(e.status, str(e), *extra)  # type: ignore[no-any-return]
        self.ctx.count("packs")
        body = json.dumps({"accepted": len(readings)}).encode() + b"\n"
        return httpd.Response(200, body)  # type: ignore[no-any-return]

    # -- MQTT -------------------------------------------------------------------------------

    def _mqtt_message(self, topic: str, payload: bytes, retained: bool) -> None:
        mqtt = self.config.mqtt
        if mqtt is None or self._emit is None:
            return
        sub = next((s for s in mqtt.subscriptions if topic_matches_sub(s.topic, topic)), None)
        if sub is None:
            return
        try:
            readings = self._from_message(sub, topic, payload)
            self._take(readings, Quality.UNCERTAIN if retained else Quality.GOOD)
        except Refused as e:
            self.ctx.count("mqtt_rejected")
            self._report_once(sub.topic, f"mqtt:{e}"[:80], f"message on {topic[:120]} dropped: {e}")
            return
        self.ctx.count("messages")

    def _from_message(self, sub: Subscription, topic: str, payload: bytes) -> list[Reading]:
        levels = topic.split("/")
        node = self._fill(sub.node, levels) if sub.node else ""
        if sub.format != "value":
            fmt = {"senml": "auto", "senml_json": "json", "senml_cbor": "cbor"}[sub.format]
            return self._from_senml(payload, fmt, default_node=node)
        if len(payload) > 256:
            raise Refused(413, f"a value of {len(payload)} bytes (at most 256)")
        text = payload.decode("utf-8", "replace").strip()
        value: Any
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        if isinstance(value, float) and not math.isfinite(value):
            raise Refused(400, "the value is not finite")
        if not isinstance(value, bool | int | float | str) or (isinstance(value, int) and abs(value) >= 2**63):
            raise Refused(400, f"the value {text[:40]!r} is not a number, true/false or text")
        point = self._fill(sub.point, levels)
        return self._checked([(node, point, value, sub.unit, time.time_ns())])

    @staticmethod
    def _fill(template: str, levels: list[str]) -> str:
        def level(m: re.Match[str]) -> str:
            n = int(m.group(1))
            if n >= len(levels):
                raise Refused(400, f"topic has no level {n}")
            return levels[n]

        return _TEMPLATE_RE.sub(level, template)

    # -- packs ------------------------------------------------------------------------------

    def _from_senml(self, payload: bytes, fmt: str, default_node: str) -> list[Reading]:
        now = time.time()
        try:
            records = senml.parse(payload, fmt, now, self.config.max_records)
        except senml.SenmlError as e:
            raise Refused(400, str(e)) from None
        sep = self.config.node_separator
        out: list[Reading] = []
        for r in records:
            if r.time > now + self.config.max_future:
                raise Refused(400, f"{r.name}: time {r.time:.0f} is {r.time - now:.0f}s ahead of the gateway's clock")
            if r.time < 0:
                raise Refused(400, f"{r.name}: time before 1970")
            node, point = default_node, r.name
            if sep and sep in r.name:
                node, _, point = r.name.rpartition(sep)
            if r.is_sum:
                point += "_sum"
            # float seconds near 2e9 resolve ~0.2 us: rounding to the microsecond keeps what was sent
            out.append((node, point, r.value, r.unit, round(r.time * 1e6) * 1000))
        return self._checked(out)

    def _checked(self, readings: list[Reading]) -> list[Reading]:
        """Names, allow-list, node bound and rate, for the whole pack before any of it is taken."""
        new_nodes: set[str] = set()
        for node, point, _value, _unit, _ts in readings:
            if not _POINT_RE.match(point):
                raise Refused(400, f"point name {point[:60]!r}: letters, digits and -:./_ only")
            if node:
                if not _NODE_RE.match(node):
                    raise Refused(400, f"node id {node[:60]!r}: letters, digits and -:._ only, at most 128")
                if self.config.nodes and not any(fnmatch.fnmatchcase(node, p) for p in self.config.nodes):
                    raise Refused(403, f"node {node!r} is not allowed here")
                if node not in self._nodes:
                    new_nodes.add(node)
        if len(self._nodes) + len(new_nodes) > self.config.max_nodes:
            raise Refused(403, f"more than {self.config.max_nodes} nodes; this one is not taken")
        if self.config.max_rate:
            now = time.monotonic()
            self._tokens = min(
                float(self.config.max_records), self._tokens + (now - self._refilled) * self.config.max_rate
            )
            self._refilled = now
            if len(readings) > self._tokens:
                raise Refused(429, f"more than {self.config.max_rate:g} records/s; slow down")
            self._tokens -= len(readings)
        return readings

    def _take(self, readings: list[Reading], quality: Quality = Quality.GOOD) -> None:
        emit = self._emit
        if emit is None:
            raise Refused(503, "starting; try again shortly")
        now = time.monotonic()
        for node, point, value, unit, ts in readings:
            emit(point, value, unit=unit, node=node or None, ts_ns=ts, quality=quality)
            if node:
                self._nodes[node] = now
                self._nodes.move_to_end(node)
                if node not in self._online:
                    self._online.add(node)
                    self.ctx.node_status(node, True)
        self.ctx.count("records", len(readings))

    # -- online / offline -------------------------------------------------------------------

    def _next_offline(self) -> float | None:
        limit = self.config.offline_after
        if not limit or not self._online:
            return limit or None
        oldest = min(self._nodes[n] for n in self._online)
        return max(0.01, oldest + limit - time.monotonic())

    def _sweep(self) -> None:
        limit = self.config.offline_after
        if not limit:
            return
        now = time.monotonic()
        for node in list(self._online):
            if now - self._nodes[node] >= limit:
                self._online.discard(node)
                self.ctx.node_status(node, False, f"nothing pushed for {now - self._nodes[node]:.0f}s")
