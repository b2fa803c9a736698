"""aiocoap on the daemon's loop, shared by the CoAP uplink and the CoAP receiver.

What is decided here (docs/coap.md says why): the URL schemes and their aiocoap transports,
the content-format of a batch, which response codes mean "this batch is bad" (never retried)
and which mean "try again later", TLS contexts for coaps+tcp, and OSCORE security contexts
kept in directories (aiocoap's FilesystemSecurityContext format).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import aiocoap
from aiocoap.credentials import CredentialsMap
from aiocoap.numbers.codes import Code

COSE_SIGN1 = 18
"""CoAP content-format of a batch: ``application/cose; cose-type="cose-sign1"`` (RFC 9052).

The message is a COSE_Sign1 whose *payload* is SenML-CBOR (content-format 112, named in the
COSE protected header), so the CoAP Content-Format names the envelope, not the payload."""

DEFAULT_PATH = "/sensegate/batch"
"""The batch resource's Uri-Path unless the config says otherwise."""

BLOCK_SIZE = 1024
"""Largest payload sent in one UDP message (block size exponent 6); larger ones go block-wise."""

PORTS = {"coap": 5683, "coap+tcp": 5683, "coaps+tcp": 5684}
CLIENT_TRANSPORTS = {"coap": "udp6", "coap+tcp": "tcpclient", "coaps+tcp": "tlsclient"}
SERVER_TRANSPORTS = {"coap": "udp6", "coap+tcp": "tcpserver", "coaps+tcp": "tlsserver"}

PERMANENT = frozenset({Code.BAD_REQUEST, Code.REQUEST_ENTITY_TOO_LARGE, Code.UNPROCESSABLE_ENTITY})
"""Responses that judge the content of this one request: sending the same bytes again cannot
succeed, so the batch is rejected (dead-lettered), not retried. Every other error response
(4.01/4.03 credentials, 4.02/4.15 options we send on every request, 4.04/4.05 the path,
4.08 lost block-wise state, 4.29 and 5.xx load) is about the server or our config, would hit
every batch alike, and is retried with backoff so no batch is thrown away for it."""

Outcome = Literal["ok", "reject", "retry"]


class CoapError(Exception):
    """A CoAP setting cannot be used (URL, TLS files, OSCORE context); the message says what to fix."""


@dataclass(frozen=True)
class CoapUrl:
    """coap://, coap+tcp:// or coaps+tcp:// HOST[:PORT][/PATH], split and checked."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str, default_path: str = DEFAULT_PATH) -> CoapUrl:
        parts = urlsplit(url)
        if parts.scheme not in PORTS:
            raise CoapError(f"{url!r}: the scheme must be coap://, coap+tcp:// or coaps+tcp://")
        try:
            port = parts.port or PORTS[parts.scheme]
        except ValueError:
            raise CoapError(f"{url!r}: bad port") from None
        if not parts.hostname:
            raise CoapError(f"{url!r}: no host")
        path = parts.path.rstrip("/") or default_path
        return cls(parts.scheme, parts.hostname, port, path)

    @property
    def hostport(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.hostport}"

    def __str__(self) -> str:
        return self.origin + self.path


def outcome(code: Any) -> Outcome:
    """What a response code means for the batch that was sent."""
    if code.is_successful():
        return "ok"
    if code in PERMANENT:
        return "reject"
    return "retry"


def describe(response: Any) -> str:
    """A response as one line: code, name and its diagnostic payload (if text)."""
    text = ""
    if response.payload:
        try:
            text = response.payload[:200].decode("utf-8")
        except UnicodeDecodeError:
            text = f"{len(response.payload)} bytes of payload"
    code = response.code
    return f"{code.dotted} {code.name_printable}" + (f": {text}" if text else "")


def describe_error(e: BaseException) -> str:
    """aiocoap errors often stringify to their class name; add the cause where it says more."""
    if isinstance(e, TimeoutError):
        return "no response in time"
    text = str(e) or type(e).__name__
    cause = e.__cause__ or e.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({cause})"
    return text


def tls_client_context(
    ca_file: str = "", cert_file: str = "", key_file: str = "", insecure: bool = False
) -> ssl.SSLContext:
    """A client TLS context for coaps+tcp (RFC 8323 ALPN "coap"), optionally with a client certificate."""
    try:
        ctx = ssl.create_default_context(cafile=ca_file or None)
        if cert_file:
            ctx.load_cert_chain(cert_file, key_file or None)
    except (OSError, ssl.SSLError) as e:
        raise CoapError(f"TLS files: {e}") from None
    if insecure:
        ctx.check_hostname = False
    ctx.set_alpn_protocols(["coap"])
    return ctx


def tls_server_context(cert_file: str, key_file: str, ca_file: str = "") -> ssl.SSLContext:
    """A server TLS context for coaps+tcp; with ``ca_file`` clients must present a certificate it signed."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca_file or None)
        ctx.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as e:
        raise CoapError(f"TLS files: {e}") from None
    if ca_file:
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["coap"])
    return ctx


class Credentials(CredentialsMap):  # type: ignore[misc]
    """aiocoap's credential map, plus a fixed TLS context for coaps+tcp (aiocoap's own TLS entry
    can name a CA file only, not a client certificate)."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.tls = tls

    def ssl_client_context(self, scheme: str, hostinfo: str) -> ssl.SSLContext | None:
        return self.tls

    def __bool__(self) -> bool:
        return True  # aiocoap.Context replaces a falsy (empty) map with a new one of its own


def oscore_missing_reason() -> str:
    """Empty when OSCORE can be used, else what to install."""
    import aiocoap.defaults

    missing = aiocoap.defaults.oscore_missing_modules()
    if missing:
        return f"OSCORE needs {', '.join(missing)}: pip install 'sensegate[oscore]'"
    return ""


def load_oscore(directory: str) -> Any:
    """Open the OSCORE security context kept in ``directory`` (locks it against a second user)."""
    problem = oscore_missing_reason()
    if problem:
        raise CoapError(problem)
    from aiocoap.oscore import FilesystemSecurityContext

    d = Path(directory)
    if not (d / "settings.json").exists() and not (d / "secret.json").exists():
        raise CoapError(f"OSCORE context {d}: no settings.json or secret.json there (see docs/coap.md)")
    try:
        return FilesystemSecurityContext(str(d))
    except FilesystemSecurityContext.LoadError as e:
        raise CoapError(f"OSCORE context {d}: {e}") from None
    except (OSError, ValueError) as e:
        # filelock's Timeout is an OSError subclass: another process holds the context
        raise CoapError(f"OSCORE context {d}: {describe_error(e)} (is another process using it?)") from None


def release_oscore(context: Any) -> None:
    """Persist the sequence number and release the context's lock file.

    aiocoap has no public close for a security context yet (it does this when the object is
    collected); ``_destroy`` is that same step, called now so a restart in-process can reopen it."""
    destroy = getattr(context, "_destroy", None)
    if destroy is not None and getattr(context, "lockfile", None) is not None:
        with contextlib.suppress(Exception):
            destroy()


def write_oscore_pair(client_dir: Path, server_dir: Path, secret: bytes | None = None,
                      salt: bytes | None = None, client_id: bytes = b"\x01", server_id: bytes = b"") -> None:
    """Make matching OSCORE contexts for a gateway (client) and a receiver (server).

    Each gets ``settings.json`` (ids, algorithm) and ``secret.json`` (master secret and salt,
    mode 0600); the sender id of one is the recipient id of the other."""
    secret = secret if secret is not None else secrets.token_bytes(32)
    salt = salt if salt is not None else secrets.token_bytes(8)
    for d, me, peer in ((client_dir, client_id, server_id), (server_dir, server_id, client_id)):
        d.mkdir(parents=True, exist_ok=True)
        (d / "settings.json").write_text(json.dumps(
            {"sender-id_hex": me.hex(), "recipient-id_hex": peer.hex(), "algorithm": "AES-CCM-16-64-128"},
            indent=2) + "\n")
        fd = os.open(d / "secret.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({"secret_hex": secret.hex(), "salt_hex": salt.hex()}, indent=2) + "\n")


def oscore_credentials(creds: CredentialsMap, pattern: str, context: Any) -> None:
    """Use ``context`` for every request whose URI matches ``pattern`` (client side) or
    accept it for requests that name it (server side)."""
    creds[pattern] = context
    context.authenticated_claims = [pattern]


def post(uri: str, payload: bytes) -> Any:
    """A confirmable POST of one batch (aiocoap makes requests confirmable by default)."""
    return aiocoap.Message(code=aiocoap.POST, uri=uri, payload=payload, content_format=COSE_SIGN1)
