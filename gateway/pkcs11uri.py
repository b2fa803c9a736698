"""RFC 7512 ``pkcs11:`` URIs: which module, token and key a gateway signs with, and where its PIN is.

Parsing only (no I/O, no PKCS#11 library), so ``sensegate check`` validates a key URI on any
machine. What sensegate reads::

    pkcs11:token=sensegate;object=device;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so
          &pin-source=file:/etc/sensegate/token.pin

- path attributes: ``token`` (label), ``serial``, ``manufacturer``, ``model``, ``slot-id``,
  ``object`` (key label), ``id`` (CKA_ID, percent-encoded bytes), ``type`` (``private`` or absent);
- query attributes: ``module-path`` (the library) or ``module-name`` (looked up in the standard
  module directories), ``pin-source`` (``file:/path`` or ``env:NAME``; default: the environment
  variable ``SENSEGATE_PKCS11_PIN``).

A PIN written into the URI (``pin-value``) is refused: the config file is no place for it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote_to_bytes

SCHEME = "pkcs11:"
PIN_ENV = "SENSEGATE_PKCS11_PIN"
"""Where the PIN comes from when the URI names no pin-source."""
MODULE_DIRS = ("/usr/lib/x86_64-linux-gnu/pkcs11", "/usr/lib/aarch64-linux-gnu/pkcs11",
               "/usr/lib/arm-linux-gnueabihf/pkcs11", "/usr/lib/pkcs11", "/usr/lib/softhsm",
               "/usr/local/lib/pkcs11")
"""Where ``module-name=NAME`` is looked for (Debian's multiarch directories first)."""

_PATH_ATTRS = {"token", "serial", "manufacturer", "model", "slot-id", "object", "id", "type",
               "library-manufacturer", "library-description", "library-version", "slot-description",
               "slot-manufacturer"}
_QUERY_ATTRS = {"module-path", "module-name", "pin-source", "pin-value"}
_PCHAR = re.compile(r"^(?:[A-Za-z0-9\-._~:\[\]@!$'()*+,=&/?|]|%[0-9A-Fa-f]{2})*$")


class UriError(ValueError):
    """Not a pkcs11: URI sensegate can use; the message says which part and why."""


def is_pkcs11(spec: str) -> bool:
    """True when a key setting names a token key rather than a PEM file."""
    return spec.startswith(SCHEME)


@dataclass(frozen=True)
class Pkcs11Uri:
    """The parts of a key URI sensegate acts on."""

    module: str
    token: str | None = None
    serial: str | None = None
    manufacturer: str | None = None
    model: str | None = None
    slot_id: int | None = None
    object: str | None = None
    id: bytes | None = None
    pin_source: str = f"env:{PIN_ENV}"

    def describe(self) -> str:
        """A short name for logs and findings (never the PIN)."""
        where = f"token {self.token!r}" if self.token else f"token serial {self.serial}" if self.serial else "token"
        what = f"key {self.object!r}" if self.object else f"key id {self.id.hex()}" if self.id else "key"
        return f"{what} on {where} ({Path(self.module).name})"

    def pin_file(self) -> Path | None:
        """The file the PIN is read from, if it comes from a file."""
        return Path(self.pin_source[5:]) if self.pin_source.startswith("file:") else None

    def read_pin(self) -> str:
        """The user PIN, from its file or environment variable (one trailing newline dropped)."""
        path = self.pin_file()
        if path is not None:
            try:
                return path.read_text().removesuffix("\n")
            except OSError as e:
                raise UriError(f"cannot read the token PIN from {path}: {e.strerror or e}") from None
        name = self.pin_source[4:]
        pin = os.environ.get(name)
        if pin is None:
            raise UriError(f"no token PIN: the environment variable {name} is not set (or give "
                           "pin-source=file:/etc/sensegate/token.pin in the key URI)")
        return pin


def _value(raw: str, where: str) -> bytes:
    if not _PCHAR.match(raw):
        raise UriError(f"{where}: characters outside RFC 7512 need percent-encoding")
    return unquote_to_bytes(raw)


def _text(raw: bytes, where: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise UriError(f"{where} is not UTF-8") from None


def _split(part: str, sep: str, known: set[str], what: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for item in filter(None, part.split(sep)):
        name, eq, raw = item.partition("=")
        if not eq:
            raise UriError(f"{what} attribute {name!r} has no value (write {name}=VALUE)")
        if name not in known:
            raise UriError(f"unknown {what} attribute {name!r} (known: {', '.join(sorted(known))})")
        if name in out:
            raise UriError(f"{what} attribute {name!r} given twice")
        out[name] = _value(raw, name)
    return out


def find_module(name: str) -> str:
    """The library file for ``module-name=NAME`` (``NAME.so`` in the standard directories)."""
    if "/" in name:
        raise UriError("module-name is a bare name; give a path with module-path")
    for d in MODULE_DIRS:
        for candidate in (Path(d) / f"{name}.so", Path(d) / name):
            if candidate.is_file():
                return str(candidate)
    raise UriError(f"no PKCS#11 module named {name!r} in {', '.join(MODULE_DIRS)}; give module-path")


def parse(uri: str, resolve_module: bool = False) -> Pkcs11Uri:
    """Parse a key URI; ``resolve_module`` also finds a ``module-name`` on this machine."""
    if not is_pkcs11(uri):
        raise UriError("a token key is a pkcs11: URI (RFC 7512)")
    if any(c.isspace() for c in uri) or "#" in uri:
        raise UriError("a pkcs11: URI has no whitespace or fragment")
    path, _, query = uri[len(SCHEME):].partition("?")
    p = _split(path, ";", _PATH_ATTRS, "path")
    q = _split(query, "&", _QUERY_ATTRS, "query")
    if "pin-value" in q:
        raise UriError("pin-value puts the PIN in the config; put it in a file readable only by the service "
                       "user and give pin-source=file:/etc/sensegate/token.pin")
    if p.get("type", b"private") != b"private":
        raise UriError("type must be private (the signing key)")
    if "module-path" in q and "module-name" in q:
        raise UriError("give module-path or module-name, not both")
    if "module-path" in q:
        module = _text(q["module-path"], "module-path")
        if not module.startswith("/"):
            raise UriError("module-path is an absolute path to the PKCS#11 library")
    elif "module-name" in q:
        name = _text(q["module-name"], "module-name")
        module = find_module(name) if resolve_module else name
    else:
        raise UriError("name the PKCS#11 library: module-path=/usr/lib/.../libXYZ.so")
    if "object" not in p and "id" not in p:
        raise UriError("name the key: object=LABEL or id=%01 (or both)")
    pin_source = f"env:{PIN_ENV}"
    if "pin-source" in q:
        pin_source = _text(q["pin-source"], "pin-source")
        if pin_source.startswith("/"):
            pin_source = "file:" + pin_source
        if pin_source.startswith("file://"):
            pin_source = "file:" + pin_source[7:]
        if not (pin_source.startswith("file:/") or re.match(r"^env:[A-Za-z_][A-Za-z0-9_]*$", pin_source)):
            raise UriError("pin-source is file:/ABSOLUTE/PATH or env:VARIABLE")
    slot_id = None
    if "slot-id" in p:
        raw = _text(p["slot-id"], "slot-id")
        if not raw.isdigit() or len(raw) > 20:
            raise UriError("slot-id is a decimal number")
        slot_id = int(raw)
    text = {k: _text(p[k], k) for k in ("token", "serial", "manufacturer", "model", "object") if k in p}
    if "id" in p and not p["id"]:
        raise UriError("id is empty")
    return Pkcs11Uri(module=module, slot_id=slot_id, id=p.get("id"), pin_source=pin_source, **text)


def build(module: str, token: str, label: str, pin_source: str = "") -> str:
    """A key URI from its parts, percent-encoding what needs it (for docs and `keys init`)."""
    from urllib.parse import quote

    safe = "-._~:@!$'()*+,/"
    uri = (f"pkcs11:token={quote(token, safe)};object={quote(label, safe)};type=private"
           f"?module-path={quote(module, safe)}")
    return uri + (f"&pin-source={quote(pin_source, safe)}" if pin_source else "")
