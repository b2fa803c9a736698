"""The receiver as a CoAP server: batches POSTed to it are verified and acknowledged.

Answers (docs/coap.md): 2.04 Changed for a verified batch and for a duplicate (the gateway
may forget it); 4.00 Bad Request with a diagnostic payload for a malformed batch, a failing
signature or a conflicting re-use of a batch number (the gateway dead-letters it); 4.03
Forbidden when the signing key is not trusted here or not for the gateway the batch claims (a
configuration matter: the gateway keeps the batch and retries); 4.15 for another
content-format; 4.01 without OSCORE when OSCORE is required. Block-wise requests are
reassembled by aiocoap before they reach the resource, within a size limit per transfer and in
all (4.13 Request Entity Too Large, with Size1 saying the limit): a huge or never-ending
transfer cannot fill the receiver's memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiocoap
import aiocoap.resource as resource
from aiocoap.blockwise import Block1Spool, _extract_block_key
from aiocoap.error import RequestEntityTooLarge
from aiocoap.numbers.codes import Code

from gateway import coap
from gateway.cose import MAX_MESSAGE
from gateway.receiver.blobs import MAX_BLOB
from gateway.receiver.core import Feed, Receiver

TEXT_PLAIN = 0
CBOR = 60


def _answer(code: Any, text: str = "") -> Any:
    if not text:
        return aiocoap.Message(code=code)
    return aiocoap.Message(code=code, payload=text.encode("utf-8")[:512], content_format=TEXT_PLAIN)


class _TooLarge(RequestEntityTooLarge):  # type: ignore[misc]
    """4.13 with Size1 = the limit (RFC 7959 section 2.9.3)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"over the limit of {limit} bytes")
        self.limit = limit

    def to_message(self) -> Any:
        m = super().to_message()
        m.opt.size1 = self.limit
        return m


class _BoundedSpool(Block1Spool):  # type: ignore[misc]
    """aiocoap's Block1 reassembly, refusing a transfer over ``limit`` bytes before it grows
    and forgetting the oldest unfinished transfers while all of them hold more than ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def feed_and_take(self, req: Any) -> Any:
        block1 = req.opt.block1
        if block1 is not None:
            pending = getattr(self._assemblies, "_items", None)  # aiocoap 0.4: a dict in arrival order
            mine = _extract_block_key(req)
            if block1.start + len(req.payload) > self.limit or (req.opt.size1 or 0) > self.limit:
                if isinstance(pending, dict):
                    pending.pop(mine, None)  # what it sent so far goes now, not at aiocoap's timeout
                raise _TooLarge(self.limit)
            if isinstance(pending, dict):
                held = sum(len(m.payload) for m in pending.values()) + len(req.payload)
                for key in [k for k in pending if k != mine]:  # the sender of one forgotten gets 4.08
                    if held <= self.limit:
                        break
                    held -= len(pending.pop(key).payload)
        return super().feed_and_take(req)


class _Counting(resource.Resource):  # type: ignore[misc]
    """Counts requests and Block1 blocks as they arrive (before reassembly)."""

    def __init__(self, server: CoapReceiverServer, limit: int) -> None:
        super().__init__()
        self.server = server
        self._block1 = _BoundedSpool(limit)

    async def render_to_pipe(self, pipe: Any) -> None:
        self.server.requests += 1
        if pipe.request.opt.block1 is not None:
            self.server.blocks += 1
        await super().render_to_pipe(pipe)

    def refused(self, request: Any) -> Any:
        if self.server.require_oscore and not getattr(request.remote, "authenticated_claims", None):
            return _answer(Code.UNAUTHORIZED, "OSCORE required")
        return None


class BatchResource(_Counting):
    """POST a batch (content-format 18, COSE_Sign1)."""

    async def render_post(self, request: Any) -> Any:
        refused = self.refused(request)
        if refused is not None:
            return refused
        if request.opt.content_format not in (None, coap.COSE_SIGN1):
            return _answer(Code.UNSUPPORTED_CONTENT_FORMAT, "batches are content-format 18 (COSE_Sign1)")
        data = bytes(request.payload)
        result = self.server.on_batch(data)
        if result.status in ("ok", "duplicate"):
            return aiocoap.Message(code=Code.CHANGED)
        if result.status in ("untrusted", "forged"):
            return _answer(Code.FORBIDDEN, f"not trusted here: {result.reason}")
        return _answer(Code.BAD_REQUEST, f"{result.status}: {result.reason}")


class BlobResource(_Counting, resource.PathCapable):  # type: ignore[misc]
    """PUT <blob path>/<sha256 hex> with CBOR [0, 1, content_type, bytes]."""

    async def render_put(self, request: Any) -> Any:
        refused = self.refused(request)
        if refused is not None:
            return refused
        path = request.opt.uri_path
        if len(path) != 1:
            return _answer(Code.NOT_FOUND, "blobs live at <blob path>/<sha256 hex>")
        if request.opt.content_format not in (None, CBOR):
            return _answer(Code.UNSUPPORTED_CONTENT_FORMAT, "blobs are content-format 60 (CBOR)")
        if self.server.on_blob is None:
            return _answer(Code.NOT_IMPLEMENTED, "this receiver does not take blobs")
        status = self.server.on_blob(path[0], bytes(request.payload))
        if status in ("verified", "partial"):
            return aiocoap.Message(code=Code.CHANGED)
        return _answer(Code.BAD_REQUEST, f"blob {status}")


class CoapReceiverServer:
    """An aiocoap server context on the running loop, with the batch and blob resources."""

    def __init__(
        self,
        url: str,
        on_batch: Callable[[bytes], Feed],
        receiver: Receiver,
        *,
        on_blob: Callable[[str, bytes], str] | None = None,
        oscore: str = "",
        cert_file: str = "",
        key_file: str = "",
        ca_file: str = "",
        blob_path: str = "/sensegate/blob",
        max_batch: int = MAX_MESSAGE,
        max_blob: int = MAX_BLOB + 1024,
    ) -> None:
        """``max_batch`` / ``max_blob``: the largest request body taken (block-wise ones too),
        which is also what all unfinished block-wise transfers to that resource may hold together."""
        self.url = coap.CoapUrl.parse(url)
        self.on_batch = on_batch
        self.on_blob = on_blob or getattr(receiver, "feed_blob", None)
        self.rx = receiver
        self.oscore_dir = oscore
        self.require_oscore = bool(oscore)
        self.tls = (cert_file, key_file, ca_file)
        self.blob_path = blob_path
        self.limits = (max_batch, max_blob)
        self.requests = 0
        self.blocks = 0  # Block1 blocks received (a block-wise batch shows here)
        self._ctx: Any = None
        self._oscore: Any = None
        quiet = logging.getLogger("sensegate.coap-server")
        if quiet.level == logging.NOTSET:  # aiocoap logs every block-wise "Continue" at INFO
            quiet.setLevel(logging.WARNING)

    async def start(self) -> None:
        site = resource.Site()
        site.add_resource(_segments(self.url.path), BatchResource(self, self.limits[0]))
        site.add_resource(_segments(self.blob_path), BlobResource(self, self.limits[1]))
        root: Any = site
        creds = coap.Credentials()
        if self.oscore_dir:
            from aiocoap.oscore_sitewrapper import OscoreSiteWrapper

            self._oscore = coap.load_oscore(self.oscore_dir)
            coap.oscore_credentials(creds, ":gateway", self._oscore)
            root = OscoreSiteWrapper(site, creds)
        ssl_context = None
        if self.url.scheme == "coaps+tcp":
            cert, key, ca = self.tls
            if not (cert and key):
                raise coap.CoapError("coaps+tcp:// needs a server certificate and key (--cert, --key)")
            ssl_context = coap.tls_server_context(cert, key, ca)
        port = self.url.port
        if self.url.scheme == "coaps+tcp":  # aiocoap's TLS server listens on the given port + 1
            port -= coap.PORTS["coaps+tcp"] - coap.PORTS["coap"]
        try:
            self._ctx = await aiocoap.Context.create_server_context(
                root, bind=(self.url.host, port), transports=[coap.SERVER_TRANSPORTS[self.url.scheme]],
                server_credentials=creds, loggername="sensegate.coap-server", _ssl_context=ssl_context)
        except OSError as e:
            self._release()
            raise coap.CoapError(f"cannot listen on {self.url.origin}: {e}") from None
        except BaseException:
            self._release()
            raise

    async def close(self) -> None:
        if self._ctx is not None:
            self._forget_failed_handshakes()
            await self._ctx.shutdown()
            self._ctx = None
        self._release()

    def _forget_failed_handshakes(self) -> None:
        """Work around aiocoap 0.4.17: a TLS client whose handshake failed stays in the server's
        pool half made, and shutting the server down then fails on it (AttributeError, and a
        never-awaited coroutine). Such connections carry nothing: drop them first."""
        for ri in self._ctx.request_interfaces:
            pool = getattr(getattr(ri, "token_interface", None), "_pool", None)
            if isinstance(pool, set):
                for conn in [c for c in pool if not hasattr(c, "_remote_hostinfo")]:
                    pool.discard(conn)
                    transport = getattr(conn, "_transport", None)
                    if transport is not None:
                        transport.abort()

    def _release(self) -> None:
        if self._oscore is not None:
            coap.release_oscore(self._oscore)
            self._oscore = None


def _segments(path: str) -> tuple[str, ...]:
    return tuple(p for p in path.split("/") if p)
