"""A small HTTP/1.1 GET client for camera snapshots, with Basic and Digest auth; never imports `gateway`.

Why hand-written rather than httpx: a snapshot is one GET per interval on a fresh connection,
and httpx costs ~5 MB RSS, ~0.1 s import and 7 packages on a gateway whose whole budget is
40 MB. This module is the part of HTTP a camera needs: ``Connection: close`` requests,
Content-Length / chunked / read-to-close bodies with hard size limits, Basic (RFC 7617) and
Digest (RFC 7616: MD5, SHA-256, their -sess variants, qop=auth) authentication.
Every parser here takes outside input: they raise ``HttpError`` and nothing else.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import secrets
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

MAX_HEAD = 16 * 1024
MAX_HEADERS = 100
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_STATUS = re.compile(rb"HTTP/1\.[01] ([1-5][0-9]{2})(?: ([^\r\n]*))?")
_TOKEN68 = re.compile(r"[ \t]+([A-Za-z0-9._~+/-]+=*)[ \t]*(?=,|$)")
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


class HttpError(ValueError):
    """The server's answer is not usable HTTP (or not what we asked for)."""


class Truncated(HttpError):
    """The body ended before its announced length."""


class TooLarge(HttpError):
    """The body is larger than the configured limit."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where a GET goes: parsed once from the configured URL."""

    scheme: str
    host: str
    port: int
    path: str  # request-target: path and query

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise HttpError(f"not an http(s) URL: {url!r}")
        if parts.username is not None or parts.password is not None:
            raise HttpError("put credentials in username/password, not in the URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise HttpError(f"bad port in {url!r}") from None
        if not parts.hostname:
            raise HttpError(f"no host in {url!r}")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname, port, path)


@dataclass(slots=True)
class Response:
    status: int
    reason: str
    headers: dict[str, list[str]]  # lower-case names
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[-1] if values else None


def parse_head(raw: bytes) -> Response:
    """Status line and headers (up to and including the blank line)."""
    if len(raw) > MAX_HEAD:
        raise HttpError("response head too large")
    lines = raw.split(b"\r\n")
    m = _STATUS.fullmatch(lines[0])
    if m is None:
        raise HttpError(f"not an HTTP/1.x status line: {lines[0][:40]!r}")
    headers: dict[str, list[str]] = {}
    count = 0
    for line in lines[1:]:
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise HttpError("obsolete header line folding")
        name, sep, value = line.partition(b":")
        try:
            key = name.decode("ascii")
        except UnicodeDecodeError:
            raise HttpError("non-ASCII header name") from None
        if not sep or not _TOKEN.fullmatch(key):
            raise HttpError(f"malformed header line {line[:40]!r}")
        count += 1
        if count > MAX_HEADERS:
            raise HttpError("too many headers")
        headers.setdefault(key.lower(), []).append(value.strip(b" \t").decode("latin-1"))
    reason = (m.group(2) or b"").decode("latin-1")
    return Response(int(m.group(1)), reason, headers)


def content_length(resp: Response) -> int | None:
    """The announced body length, None when absent; HttpError when contradictory or malformed."""
    values = resp.headers.get("content-length")
    if not values:
        return None
    lengths = {v.strip() for value in values for v in value.split(",")}
    if len(lengths) != 1:
        raise HttpError("conflicting Content-Length headers")
    text = lengths.pop()
    if not text.isascii() or not text.isdigit() or len(text) > 15:
        raise HttpError(f"bad Content-Length {text[:20]!r}")
    return int(text)


def decode_chunked(data: bytes, max_size: int) -> bytes:
    """The body of a complete chunked transfer; Truncated when the last chunk is missing."""
    out = bytearray()
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            raise Truncated("chunked body ended inside a chunk header")
        size_text = data[pos:end].split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 8 or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
            raise HttpError(f"bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        pos = end + 2
        if size == 0:
            return bytes(out)  # trailers, if any, are ignored
        if len(out) + size > max_size:
            raise TooLarge(f"body larger than {max_size} bytes")
        if pos + size + 2 > len(data):
            raise Truncated("chunked body ended inside a chunk")
        if data[pos + size : pos + size + 2] != b"\r\n":
            raise HttpError("chunk not followed by CRLF")
        out += data[pos : pos + size]
        pos += size + 2


# -- authentication --------------------------------------------------------------------------------


@dataclass(slots=True)
class Challenge:
    scheme: str  # lower case: "basic", "digest", ...
    params: dict[str, str] = field(default_factory=dict)  # lower-case names


def _quoted(text: str, pos: int) -> tuple[str, int]:
    """A quoted-string starting at text[pos] == '"'; returns (value, position after it)."""
    out = []
    i = pos + 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text):
                break
            out.append(text[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise HttpError("unterminated quoted string in WWW-Authenticate")


def parse_challenges(values: list[str]) -> list[Challenge]:
    """Challenges from WWW-Authenticate header values (several may share one header)."""
    out: list[Challenge] = []
    for text in values:
        if len(text) > 4096:
            raise HttpError("WWW-Authenticate header too long")
        pos, n = 0, len(text)
        current: Challenge | None = None
        while pos < n:
            while pos < n and text[pos] in " \t,":
                pos += 1
            if pos >= n:
                break
            m = _TOKEN.match(text, pos)
            if m is None:
                raise HttpError(f"unexpected {text[pos : pos + 10]!r} in WWW-Authenticate")
            word, after = m.group(), m.end()
            look = after
            while look < n and text[look] in " \t":
                look += 1
            if current is not None and look < n and text[look] == "=" and text[look + 1 : look + 2] != "=":
                pos = look + 1  # an auth-param of the current challenge
                while pos < n and text[pos] in " \t":
                    pos += 1
                if pos < n and text[pos] == '"':
                    value, pos = _quoted(text, pos)
                else:
                    vm = _TOKEN.match(text, pos)
                    if vm is None:
                        raise HttpError(f"missing value for {word!r} in WWW-Authenticate")
                    value, pos = vm.group(), vm.end()
                current.params[word.lower()] = value
                continue
            current = Challenge(word.lower())  # a new scheme
            out.append(current)
            pos = after
            # token68 form (e.g. "Negotiate abc=="): kept, though we only need the scheme
            tm = _TOKEN68.match(text, pos)
            if tm is not None:
                current.params["token68"] = tm.group(1)
                pos = tm.end()
    return out


def basic_header(username: str, password: str) -> str:
    """Authorization value for Basic (RFC 7617, UTF-8)."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def digest_header(
    ch: Challenge, username: str, password: str, method: str, uri: str, nc: int, cnonce: str | None = None
) -> str:
    """Authorization value answering a Digest challenge (RFC 7616 section 3.4)."""
    p = ch.params
    algorithm = p.get("algorithm", "MD5")
    base, sess = algorithm.upper().removesuffix("-SESS"), algorithm.upper().endswith("-SESS")
    if base not in _HASHES:
        raise HttpError(f"unsupported digest algorithm {algorithm[:20]!r}")
    realm, nonce = p.get("realm", ""), p.get("nonce")
    if not nonce:
        raise HttpError("digest challenge without a nonce")
    qops = [q.strip().lower() for q in p["qop"].split(",")] if "qop" in p else None
    if qops is not None and "auth" not in qops:
        raise HttpError(f"unsupported digest qop {p['qop'][:20]!r} (only auth)")
    hash_fn = _HASHES[base]

    def h(text: str) -> str:
        return hash_fn(text.encode()).hexdigest()

    cnonce = cnonce or secrets.token_hex(16)
    ha1 = h(f"{username}:{realm}:{password}")
    if sess:
        ha1 = h(f"{ha1}:{nonce}:{cnonce}")
    ha2 = h(f"{method}:{uri}")
    parts = [f"username={_q(username)}", f"realm={_q(realm)}", f"nonce={_q(nonce)}", f"uri={_q(uri)}"]
    if qops is None:  # RFC 2069 compatibility
        parts.append(f"response={_q(h(f'{ha1}:{nonce}:{ha2}'))}")
    else:
        ncs = f"{nc:08x}"
        parts.append(f"response={_q(h(f'{ha1}:{nonce}:{ncs}:{cnonce}:auth:{ha2}'))}")
        parts += ["qop=auth", f"nc={ncs}", f"cnonce={_q(cnonce)}"]
    parts.append(f"algorithm={algorithm}")
    if "opaque" in p:
        parts.append(f"opaque={_q(p['opaque'])}")
    return "Digest " + ", ".join(parts)


class Auth:
    """Per-camera authentication state: which scheme, the current digest nonce and its count."""

    def __init__(self, username: str, password: str, mode: str = "auto") -> None:
        self.username, self.password, self.mode = username, password, mode
        self._challenge: Challenge | None = None
        self._nc = 0
        self._basic = mode == "basic" and bool(username)

    @property
    def configured(self) -> bool:
        return bool(self.username) and self.mode != "none"

    def header(self, method: str, uri: str) -> str | None:
        """The Authorization value to send up front (after a first challenge), or None."""
        if self._basic:
            return basic_header(self.username, self.password)
        if self._challenge is not None:
            self._nc += 1
            return digest_header(self._challenge, self.username, self.password, method, uri, self._nc)
        return None

    def learn(self, resp: Response) -> bool:
        """Take a 401's challenges; True if retrying with (new) credentials makes sense."""
        if not self.configured:
            return False
        challenges = parse_challenges(resp.headers.get("www-authenticate", []))
        digests = [c for c in challenges if c.scheme == "digest" and _supported(c)]
        if self.mode in ("auto", "digest") and digests:
            # prefer SHA-256 when the camera offers both (RFC 7616 section 3.7)
            self._challenge = min(
                digests, key=lambda c: 0 if c.params.get("algorithm", "").upper()[:7] == "SHA-256" else 1
            )
            self._nc = 0
            self._basic = False
            return True
        if self.mode in ("auto", "basic") and any(c.scheme == "basic" for c in challenges):
            self._basic = True
            return True
        return False


def _supported(ch: Challenge) -> bool:
    algorithm = ch.params.get("algorithm", "MD5").upper().removesuffix("-SESS")
    qops = [q.strip().lower() for q in ch.params.get("qop", "auth").split(",")]
    return algorithm in _HASHES and "auth" in qops and bool(ch.params.get("nonce"))


async def get(
    target: Target,
    auth: Auth,
    *,
    max_size: int,
    ssl_context: ssl.SSLContext | None = None,
    user_agent: str = "sensegate",
) -> Response:
    """GET with authentication (one retry after a 401 challenge); the final Response, any status."""
    resp = await _get_once(target, auth.header("GET", target.path), max_size, ssl_context, user_agent)
    if resp.status == 401 and auth.learn(resp):
        resp = await _get_once(target, auth.header("GET", target.path), max_size, ssl_context, user_agent)
    return resp


async def _get_once(
    target: Target, authorization: str | None, max_size: int, ssl_context: ssl.SSLContext | None, user_agent: str
) -> Response:
    host = target.host if ":" not in target.host else f"[{target.host}]"
    default_port = 443 if target.scheme == "https" else 80
    host_header = host if target.port == default_port else f"{host}:{target.port}"
    lines = [f"GET {target.path} HTTP/1.1", f"Host: {host_header}", f"User-Agent: {user_agent}", "Accept: image/*"]
    if authorization:
        lines.append(f"Authorization: {authorization}")
    lines.append("Connection: close")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    use_ssl = ssl_context if target.scheme == "https" else None
    reader, writer = await asyncio.open_connection(
        target.host, target.port, ssl=use_ssl, server_hostname=target.host if use_ssl else None, limit=MAX_HEAD
    )
    try:
        writer.write(request)
        await writer.drain()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            raise Truncated("connection closed before the response head ended") from e
        except asyncio.LimitOverrunError as e:
            raise HttpError("response head too large") from e
        resp = parse_head(head)
        if resp.status != 200:
            return resp  # the body (an error page) is not needed
        resp.body = await _read_body(reader, resp, max_size)
        return resp
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


async def _read_body(reader: asyncio.StreamReader, resp: Response, max_size: int) -> bytes:
    encoding = ",".join(resp.headers.get("transfer-encoding", [])).strip().lower()
    if encoding and encoding != "chunked":
        raise HttpError(f"unsupported Transfer-Encoding {encoding[:30]!r}")
    if encoding == "chunked":
        data = await _read_to_close(reader, max_size + max_size // 8 + 4096)
        return decode_chunked(data, max_size)
    length = content_length(resp)
    if length is None:
        return await _read_to_close(reader, max_size)
    if length > max_size:
        raise TooLarge(f"image of {length} bytes is larger than max_size ({max_size})")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError as e:
        raise Truncated(f"body truncated: got {len(e.partial)} of {length} bytes") from None


async def _read_to_close(reader: asyncio.StreamReader, limit: int) -> bytes:
    data = bytearray()
    while chunk := await reader.read(65536):
        data += chunk
        if len(data) > limit:
            raise TooLarge(f"body larger than {limit} bytes")
    return bytes(data)
