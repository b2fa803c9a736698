"""pysnmp on the host's event loop: GET and GETBULK walks against one agent, and a trap receiver.

Every variable binding leaves this module as ``(oid tuple, kind, raw)`` (see ``drivers.snmp.oids``),
so the rest of the driver never touches pysnmp's types. Each client and receiver owns its own
``SnmpEngine``: two driver instances share nothing. Never imports ``gateway``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pyasn1.type import univ
from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import ntfrcv
from pysnmp.hlapi.v3arch.asyncio import (
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    UsmUserData,
    bulk_cmd,
    get_cmd,
)
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.proto.api import v2c

from drivers.snmp.oids import Oid, oid_str

AUTH_PROTOCOLS = {
    "none": config.USM_AUTH_NONE,
    "md5": config.USM_AUTH_HMAC96_MD5,
    "sha": config.USM_AUTH_HMAC96_SHA,
    "sha224": config.USM_AUTH_HMAC128_SHA224,
    "sha256": config.USM_AUTH_HMAC192_SHA256,
    "sha384": config.USM_AUTH_HMAC256_SHA384,
    "sha512": config.USM_AUTH_HMAC384_SHA512,
}
PRIV_PROTOCOLS = {
    "none": config.USM_PRIV_NONE,
    "des": config.USM_PRIV_CBC56_DES,
    "3des": config.USM_PRIV_CBC168_3DES,
    "aes": config.USM_PRIV_CFB128_AES,
    "aes192": config.USM_PRIV_CFB192_AES,
    "aes256": config.USM_PRIV_CFB256_AES,
}
Binding = tuple[Oid, str, "int | bytes | str | None"]
# pysnmp's error indications of a v3 credential mismatch -> what the user should check
_HINTS = {
    "digest": " (authentication failed: check auth_protocol and auth_key)",
    "unknown usm user": " (the agent does not know this user: check user)",
    "decrypt": " (decryption failed: check priv_protocol and priv_key)",
    "unsupported security level": " (the agent wants another security level: check auth/priv protocols)",
}


class SnmpError(Exception):
    """A request failed: no answer, an authentication failure or an error status."""


class NoResponse(SnmpError):
    """The agent did not answer within timeout x retries."""


@dataclass(frozen=True)
class Credentials:
    """v2c community or v3 USM user (auth/priv protocol names as in AUTH_PROTOCOLS/PRIV_PROTOCOLS)."""

    version: str  # "v2c" | "v3"
    community: str = "public"
    user: str = ""
    auth_protocol: str = "none"
    auth_key: str = ""
    priv_protocol: str = "none"
    priv_key: str = ""
    context: str = ""

    def auth_data(self) -> CommunityData | UsmUserData:
        if self.version == "v2c":
            return CommunityData(self.community, mpModel=1)
        return UsmUserData(
            self.user,
            authKey=self.auth_key or None,
            privKey=self.priv_key or None,
            authProtocol=AUTH_PROTOCOLS[self.auth_protocol],
            privProtocol=PRIV_PROTOCOLS[self.priv_protocol],
        )


def classify(value: Any) -> tuple[str, int | bytes | str | None]:
    """pysnmp value -> (kind, raw) of drivers.snmp.oids; SMI application types before the universal
    types they derive from (a Counter32 is also an Integer)."""
    if isinstance(value, rfc1905.NoSuchObject | rfc1905.NoSuchInstance | rfc1905.EndOfMibView):
        return "missing", None
    if isinstance(value, rfc1902.Counter64):
        return "counter64", int(value)
    if isinstance(value, rfc1902.Counter32):
        return "counter32", int(value)
    if isinstance(value, rfc1902.TimeTicks):
        return "timeticks", int(value)
    if isinstance(value, rfc1902.Gauge32 | rfc1902.Unsigned32):
        return "gauge", int(value)
    if isinstance(value, univ.Integer):  # Integer32 and enumerations (pyasn1's universal type)
        return "integer", int(value)
    if isinstance(value, rfc1902.IpAddress):
        raw = bytes(value.asOctets())
        return "ipaddress", ".".join(map(str, raw)) if len(raw) == 4 else raw.hex()
    if isinstance(value, rfc1902.Opaque):
        return "opaque", bytes(value.asOctets())
    if isinstance(value, rfc1902.Bits):
        return "bits", bytes(value.asOctets())
    if isinstance(value, univ.OctetString):
        return "octets", bytes(value.asOctets())
    if isinstance(value, univ.ObjectIdentifier):
        return "oid", oid_str(tuple(value))
    if isinstance(value, univ.Null):
        return "null", None
    return "unknown", None


def _bindings(var_binds: Sequence[Any]) -> list[Binding]:
    out: list[Binding] = []
    for vb in var_binds:
        oid, value = vb[0], vb[1]
        kind, raw = classify(value)
        out.append((tuple(oid), kind, raw))
    return out


class SnmpClient:
    """GET and GETBULK against one agent; one request at a time (the host serialises polls)."""

    def __init__(self, host: str, port: int, creds: Credentials, timeout: float, retries: int) -> None:
        self.where = f"{host}:{port}"
        self._host, self._port = host, port
        self._creds = creds
        self._timeout, self._retries = timeout, retries
        self._engine: SnmpEngine | None = None
        self._target: UdpTransportTarget | None = None
        self._auth = creds.auth_data()
        self._context = ContextData(contextName=creds.context.encode()) if creds.context else ContextData()

    async def open(self) -> None:
        self._engine = SnmpEngine()
        try:
            self._target = await UdpTransportTarget.create(
                (self._host, self._port), timeout=self._timeout, retries=self._retries
            )
        except Exception as e:  # pysnmp wraps name resolution failures in its own error
            await self.close()
            raise SnmpError(f"cannot resolve {self._host}: {e}") from e

    async def get(self, oids: Sequence[Oid]) -> list[Binding]:
        """One GET of ``oids``; missing objects come back as kind ``missing``."""
        res = await get_cmd(
            self._need_engine(), self._auth, self._target, self._context,
            *(ObjectType(ObjectIdentity(oid_str(o))) for o in oids), lookupMib=False,
        )
        return _bindings(self._check(res, "get"))

    async def walk(self, prefix: Oid, max_repetitions: int, max_rows: int) -> tuple[list[Binding], bool]:
        """Every instance below ``prefix`` with GETBULK; (bindings, truncated at max_rows)."""
        rows: list[Binding] = []
        last = prefix
        while True:
            res = await bulk_cmd(
                self._need_engine(), self._auth, self._target, self._context, 0, max_repetitions,
                ObjectType(ObjectIdentity(oid_str(last))), lookupMib=False,
            )
            batch = _bindings(self._check(res, "getbulk"))
            if not batch:
                return rows, False
            for oid, kind, raw in batch:
                if kind == "missing" or oid[: len(prefix)] != prefix or len(oid) <= len(prefix):
                    return rows, False
                if oid <= last:  # an agent that does not advance would loop forever
                    raise SnmpError(f"agent returned {oid_str(oid)} after {oid_str(last)} (OIDs not increasing)")
                rows.append((oid, kind, raw))
                last = oid
                if len(rows) >= max_rows:
                    return rows, True

    def _need_engine(self) -> SnmpEngine:
        if self._engine is None or self._target is None:
            raise SnmpError("not open")
        return self._engine

    def _check(self, res: tuple[Any, Any, Any, Any], what: str) -> Sequence[Any]:
        indication, status, index, var_binds = res
        if indication:
            text = str(indication)
            if "before timeout" in text or "No SNMP response" in text:
                raise NoResponse(f"{self.where} did not answer ({text})")
            hint = next((h for key, h in _HINTS.items() if key in text.lower()), "")
            raise SnmpError(f"{what} to {self.where} failed: {text}{hint}")
        if status:
            at = ""
            with contextlib.suppress(Exception):
                at = f" at {oid_str(tuple(var_binds[int(index) - 1][0]))}" if int(index) else ""
            raise SnmpError(f"{what} to {self.where}: {status.prettyPrint()}{at}")
        return var_binds  # type: ignore[no-any-return]

    async def close(self) -> None:
        eng, self._engine = self._engine, None
        if eng is not None:
            eng.close_dispatcher()
            await _settle()


async def _settle() -> None:
    """Let tasks pysnmp cancelled on close finish (its timer task and endpoint futures)."""
    for _ in range(3):
        await asyncio.sleep(0)


TrapHandler = Callable[[tuple[str, int], list[Binding]], None]


class _GuardedUdp(udp.UdpTransport):  # type: ignore[misc]
    """pysnmp's UDP endpoint, but a datagram pysnmp cannot decode is counted, not a traceback in
    the log per datagram (pyasn1 raises TypeError and more on hostile BER)."""

    malformed = 0

    def datagram_received(self, datagram: bytes, address: Any) -> None:
        cb = self._callback_function
        if cb is None:
            return
        try:
            cb(self, address, datagram)
        except Exception:
            self.malformed += 1


class TrapReceiver:
    """Receive SNMPv2c traps (by community) and SNMPv3 traps (by user and sender engine ID)."""

    def __init__(self, handler: TrapHandler) -> None:
        self._handler = handler
        self._engine: Any = None
        self._receiver: Any = None
        self._transport: _GuardedUdp | None = None
        self.port = 0

    @property
    def malformed(self) -> int:
        """Datagrams that were not SNMP messages pysnmp could decode."""
        return self._transport.malformed if self._transport is not None else 0

    async def open(
        self,
        address: str,
        port: int,
        communities: Sequence[str],
        creds: Credentials | None,
        engine_ids: Sequence[bytes],
    ) -> None:
        """Bind the UDP port (OSError if taken) and start receiving."""
        sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((address, port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        eng = engine.SnmpEngine()
        self._engine = eng
        transport = _GuardedUdp(loop=asyncio.get_running_loop()).open_server_mode(sock=sock)
        self._transport = transport
        config.add_transport(eng, udp.DOMAIN_NAME, transport)
        for i, community in enumerate(communities):
            config.add_v1_system(eng, f"trap-{i}", community)
        if creds is not None:
            for eid in engine_ids:
                config.add_v3_user(
                    eng, creds.user,
                    AUTH_PROTOCOLS[creds.auth_protocol], creds.auth_key or None,
                    PRIV_PROTOCOLS[creds.priv_protocol], creds.priv_key or None,
                    securityEngineId=v2c.OctetString(hexValue=eid.hex()),
                )
        self._receiver = ntfrcv.NotificationReceiver(eng, self._on_trap)
        await _settle()

    def _on_trap(
        self, eng: Any, state_reference: Any, _ctx_engine: Any, _ctx_name: Any, var_binds: Any, _cb_ctx: Any
    ) -> None:
        source: tuple[str, int] = ("", 0)
        with contextlib.suppress(Exception):
            _domain, address = eng.message_dispatcher.get_transport_info(state_reference)
            source = (str(address[0]), int(address[1]))
        self._handler(source, _bindings(var_binds))

    async def close(self) -> None:
        eng, self._engine = self._engine, None
        if eng is None:
            return
        if self._receiver is not None:
            self._receiver.close(eng)
            self._receiver = None
        eng.close_dispatcher()
        await _settle()
