"""CoAP uplink: a confirmable POST per signed batch, acknowledged only by a 2.xx response.

One aiocoap client context on the daemon's loop (no threads). Large batches and blobs go
block-wise (RFC 7959, done by aiocoap). Over UDP there is no connection, so "connected" is
defined here: the last exchange got an answer, or the backoff after a failure has expired and
the next POST is the probe (sent alone, ``window`` 1, until it is answered). A failure (no
answer within ``timeout``, a network error, or a "try later" response) marks the uplink
disconnected: every POST in flight is abandoned for the pipeline to re-send, and the next
attempt waits for exponential backoff. A response that says the batch itself is bad (see
``gateway.coap.PERMANENT``) goes to ``on_reject`` and is never retried. docs/coap.md has more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import aiocoap
import cbor2

from gateway import coap
from gateway.config.schema import CoapUplink as CoapUplinkConfig
from gateway.scheduler import Backoff, NodeTracker
from gateway.wire import Batch

log = logging.getLogger("sensegate.uplink.coap")


def _noop_ack(batch: Batch) -> None:
    pass


def _noop_state(up: bool) -> None:
    pass


def _log_reject(batch: Batch, reason: str) -> None:
    log.error("batch %d rejected by the server: %s (no dead-letter handler is set)", batch.bseq, reason)


class CoapUplink:
    """Batches to one CoAP server; the pipeline sees the same protocol as for MQTT."""

    def __init__(self, cfg: CoapUplinkConfig, gateway_id: str, nodes: NodeTracker | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.gateway_id = gateway_id
        self.url = coap.CoapUrl.parse(cfg.url)
        self.uri = self.url.origin + cfg.path
        self.on_ack: Callable[[Batch], None] = _noop_ack
        self.on_state: Callable[[bool], None] = _noop_state
        self.on_reject: Callable[[Batch, str], None] = _log_reject
        self.errors = 0
        self.last_error = ""
        self.acked = 0
        self.rejected = 0
        self.latency_s = 0.0
        self.boot = 0
        self._window = cfg.inflight
        self._up = False
        self._probing = True  # until an answer proves the server is there, one POST at a time
        self._ctx: Any = None
        self._oscore: Any = None
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._backoff = Backoff(1.0, cfg.reconnect_max)
        self._retry: asyncio.TimerHandle | None = None
        self._bulk = asyncio.Lock()
        self._outage_logged = False

    # -- the Uplink protocol ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._up

    @property
    def reachable(self) -> bool:
        return self._up and not self._probing

    async def probe(self) -> None:
        """A GET on the batch resource: any answer (4.05 Method Not Allowed is the usual one)
        shows the server is there; none within ``timeout`` marks the uplink down, as a POST would."""
        if not self._up or not self._probing or self._ctx is None:
            return
        try:
            async with asyncio.timeout(self.cfg.timeout):
                await self._ctx.request(aiocoap.Message(code=aiocoap.GET, uri=self.uri)).response
        except (TimeoutError, aiocoap.error.Error, OSError) as e:
            self._failed(f"probe: {coap.describe_error(e)}")
            return
        self._answered()

    @property
    def window(self) -> int:
        return 1 if self._probing else self._window

    @window.setter
    def window(self, value: int) -> None:
        self._window = value

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    async def start(self) -> None:
        """Make the client context (TLS, OSCORE from files); raises CoapError on a bad setting."""
        creds = coap.Credentials(self._tls())
        transports = [coap.CLIENT_TRANSPORTS[self.url.scheme]]
        if self.cfg.oscore:
            self._oscore = coap.load_oscore(self.cfg.oscore)
            coap.oscore_credentials(creds, self.url.origin + "/*", self._oscore)
            transports.insert(0, "oscore")

        class _Context(aiocoap.Context):  # type: ignore[misc]
            def __init__(self, **kw: Any) -> None:
                super().__init__(client_credentials=creds, **kw)

        try:
            self._ctx = await _Context.create_client_context(transports=transports, loggername="sensegate.coap")
        except Exception:
            self._release_oscore()
            raise
        log.info("%s: sending batches to %s%s", self.name, self.uri, " (OSCORE)" if self._oscore else "")
        self._set_up(True)

    def _tls(self) -> Any:
        if self.url.scheme != "coaps+tcp":
            return None
        t = self.cfg.tls
        if t is None:
            return coap.tls_client_context()
        return coap.tls_client_context(t.ca_file, t.cert_file, t.key_file, t.insecure)

    def send(self, batch: Batch) -> None:
        if not self._up or self._ctx is None:
            raise ConnectionError("not connected")
        if batch.bseq in self._inflight:
            return  # already on its way
        self._inflight[batch.bseq] = asyncio.create_task(self._post(batch), name=f"uplink:{self.name}:{batch.bseq}")

    async def close(self) -> None:
        """Abandon what is in flight (it stays buffered), shut the context, release OSCORE."""
        self._up = False
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        await self._abandon()
        if self._ctx is not None:
            await self._ctx.shutdown()
            self._ctx = None
        self._release_oscore()

    @property
    def downlink(self) -> None:
        """None: a CoAP-only gateway takes pushes on its own CoAP resource (remote.coap_listen)."""
        return None

    def publish_health(self, payload: bytes, state: str = "online") -> bool:
        """CoAP has no retained status to refresh: the heartbeat goes out over MQTT uplinks only."""
        return False

    # -- blobs -------------------------------------------------------------------------------

    async def send_blob(self, sha256: bytes, content_type: str, data: bytes) -> None:
        """PUT one blob to ``<blob_path>/<sha256 hex>``, block-wise; returns once it was accepted.

        The payload is CBOR ``[0, 1, content_type, bytes]``, the one-chunk form of the MQTT
        blob message (docs/topics.md), so receivers check both the same way."""
        if not self._up or self._ctx is None:
            raise ConnectionError("not connected")
        uri = f"{self.url.origin}{self.cfg.blob_path}/{sha256.hex()}"
        msg = aiocoap.Message(code=aiocoap.PUT, uri=uri, payload=cbor2.dumps([0, 1, content_type, data]),
                              content_format=60)
        try:
            async with asyncio.timeout(self.cfg.timeout):
                response = await self._ctx.request(msg).response
        except (TimeoutError, aiocoap.error.Error, OSError) as e:
            raise ConnectionError(f"blob upload: {coap.describe_error(e)}") from None
        if not response.code.is_successful():
            raise ConnectionError(f"blob upload: {coap.describe(response)}")

    # -- one batch ---------------------------------------------------------------------------

    async def _post(self, batch: Batch) -> None:
        msg = coap.post(self.uri, batch.data)
        bulk = self.url.scheme == "coap" and len(batch.data) > coap.BLOCK_SIZE
        try:
            # Over UDP a batch larger than one block goes block-wise: one such transfer at a
            # time, each with its own Request-Tag (RFC 9175), so that no server can ever
            # splice the blocks of two batches together (aiocoap's own server would).
            async with self._bulk if bulk else contextlib.nullcontext():
                if bulk:
                    msg.opt.request_tag = [secrets.token_bytes(4)]
                sent = time.monotonic()
                async with asyncio.timeout(self.cfg.timeout):
                    response = await self._ctx.request(msg).response
        except (TimeoutError, aiocoap.error.Error, OSError) as e:
            self._inflight.pop(batch.bseq, None)
            self._failed(coap.describe_error(e))
            return
        self._inflight.pop(batch.bseq, None)
        verdict = coap.outcome(response.code)
        if verdict == "retry":
            self._failed(coap.describe(response), retry_after=self._max_age(response))
            return
        self._answered()
        if verdict == "ok":
            self.acked += 1
            self.latency_s = time.monotonic() - sent
            self.on_ack(batch)
        else:
            self.rejected += 1
            reason = coap.describe(response)
            log.error("%s: batch %d rejected by the server: %s", self.name, batch.bseq, reason)
            self.on_reject(batch, reason)

    @staticmethod
    def _max_age(response: Any) -> float:
        if response.code in (aiocoap.numbers.codes.Code.TOO_MANY_REQUESTS,
                             aiocoap.numbers.codes.Code.SERVICE_UNAVAILABLE):
            return float(response.opt.max_age or 0)
        return 0.0

    # -- state -------------------------------------------------------------------------------

    def _set_up(self, up: bool) -> None:
        if up == self._up:
            return
        self._up = up
        self.on_state(up)

    def _answered(self) -> None:
        """The server answered: it is there; open the full window."""
        self._backoff.reset()
        if self._outage_logged:
            log.info("%s: %s answers again", self.name, self.url.origin)
            self._outage_logged = False
        self._probing = False

    def _failed(self, why: str, retry_after: float = 0.0) -> None:
        """No answer, or "try later": down until the backoff (at least ``retry_after``) expires."""
        self.errors += 1
        self.last_error = why  # the health gate's rollback reason quotes it
        if not self._up:
            return  # already counted as down (an abandoned POST finishing late)
        if not self._outage_logged:
            log.warning("%s: %s: %s; retrying with backoff", self.name, self.uri, why)
            self._outage_logged = True
        else:
            log.debug("%s: %s", self.name, why)
        self._probing = True
        for task in self._inflight.values():
            task.cancel()
        self._inflight.clear()
        self._set_up(False)
        delay = max(self._backoff.next(), retry_after)
        self._retry = asyncio.get_running_loop().call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._set_up(True)

    async def _abandon(self) -> None:
        tasks = list(self._inflight.values())
        self._inflight.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _release_oscore(self) -> None:
        if self._oscore is not None:
            coap.release_oscore(self._oscore)
            self._oscore = None
