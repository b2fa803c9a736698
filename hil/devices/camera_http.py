"""Simulated IP camera for drivers/camera: an asyncio HTTP/1.1 server on a loopback port.

``/snapshot.jpg`` and ``/snapshot.png`` serve a different real image on each request (JPEGs
made once with ffmpeg and kept here as constants; PNGs encoded with zlib on the fly). Login:
none, Basic, or Digest (RFC 7616: MD5 or SHA-256, qop=auth), checked by this module's own
code (the tests also check it with curl). Faults, set on ``fault``: ``slow`` (answers
nothing), ``truncated`` (closes mid-body), ``wrong_type`` (an HTML page), ``error500``,
``garbage`` (not HTTP), ``bad_magic`` (image/jpeg that is not a JPEG); ``chunked`` switches
to chunked transfer encoding (a valid variant). Demo: ``python -m hil.devices.camera_http``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import struct
import zlib

Headers = tuple[tuple[str, str], ...]

_JPEGS_B64 = (
    # red, 16x16
    "/9j/4AAQSkZJRgABAgAAAQABAAD//gAQTGF2YzU5LjM3LjEwMAD/2wBDAAgKCgsKCw0NDQ0NDRAPEBAQEBAQEBAQEBASEhIVFRUS"
    "EhIQEBISFBQVFRcXFxUVFRUXFxkZGR4eHBwjIyQrKzP/xAGiAAABBQEBAQEBAQAAAAAAAAAAAQIDBAUGBwgJCgsBAAMBAQEBAQEB"
    "AQEAAAAAAAABAgMEBQYHCAkKCxAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkK"
    "FhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ip"
    "qrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6EQACAQIEBAMEBwUEBAABAncAAQIDEQQFITEG"
    "EkFRB2FxEyIygQgUQpGhscEJIzNS8BVictEKFiQ04SXxFxgZGiYnKCkqNTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1"
    "dnd4eXqCg4SFhoeIiYqSk5SVlpeYmZqio6Slpqeoqaqys7S1tre4ubrCw8TFxsfIycrS09TV1tfY2dri4+Tl5ufo6ery8/T19vf4"
    "+fr/wAARCAAQABADASIAAhEAAxEA/9oADAMBAAIRAxEAPwDi6KKK+UP38//Z",
    # green, 16x16
    "/9j/4AAQSkZJRgABAgAAAQABAAD//gAQTGF2YzU5LjM3LjEwMAD/2wBDAAgKCgsKCw0NDQ0NDRAPEBAQEBAQEBAQEBASEhIVFRUS"
    "EhIQEBISFBQVFRcXFxUVFRUXFxkZGR4eHBwjIyQrKzP/xAGiAAABBQEBAQEBAQAAAAAAAAAAAQIDBAUGBwgJCgsBAAMBAQEBAQEB"
    "AQEAAAAAAAABAgMEBQYHCAkKCxAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkK"
    "FhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ip"
    "qrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6EQACAQIEBAMEBwUEBAABAncAAQIDEQQFITEG"
    "EkFRB2FxEyIygQgUQpGhscEJIzNS8BVictEKFiQ04SXxFxgZGiYnKCkqNTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1"
    "dnd4eXqCg4SFhoeIiYqSk5SVlpeYmZqio6Slpqeoqaqys7S1tre4ubrCw8TFxsfIycrS09TV1tfY2dri4+Tl5ufo6ery8/T19vf4"
    "+fr/wAARCAAQABADASIAAhEAAxEA/9oADAMBAAIRAxEAPwDi6KKK+VPiT//Z",
    # blue, 16x16
    "/9j/4AAQSkZJRgABAgAAAQABAAD//gAQTGF2YzU5LjM3LjEwMAD/2wBDAAgKCgsKCw0NDQ0NDRAPEBAQEBAQEBAQEBASEhIVFRUS"
    "EhIQEBISFBQVFRcXFxUVFRUXFxkZGR4eHBwjIyQrKzP/xAGiAAABBQEBAQEBAQAAAAAAAAAAAQIDBAUGBwgJCgsBAAMBAQEBAQEB"
    "AQEAAAAAAAABAgMEBQYHCAkKCxAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2JyggkK"
    "FhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZmqKjpKWmp6ip"
    "qrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6EQACAQIEBAMEBwUEBAABAncAAQIDEQQFITEG"
    "EkFRB2FxEyIygQgUQpGhscEJIzNS8BVictEKFiQ04SXxFxgZGiYnKCkqNTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1"
    "dnd4eXqCg4SFhoeIiYqSk5SVlpeYmZqio6Slpqeoqaqys7S1tre4ubrCw8TFxsfIycrS09TV1tfY2dri4+Tl5ufo6ery8/T19vf4"
    "+fr/wAARCAAQABADASIAAhEAAxEA/9oADAMBAAIRAxEAPwDxyiiiv388s//Z",
)
JPEGS = tuple(base64.b64decode(j) for j in _JPEGS_B64)


def png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid truecolour PNG of one colour (IHDR, zlib IDAT, IEND with CRCs)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\x00" + bytes(rgb) * width  # filter type 0 per scanline
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(row * height)) + chunk(b"IEND", b"")
    )


class CameraServer:
    """An IP camera's snapshot endpoint; every request returns the next frame."""

    def __init__(
        self, auth: str | None = None, username: str = "admin", password: str = "secret", algorithm: str = "MD5"
    ) -> None:
        self.auth = auth  # None, "basic" or "digest"
        self.username, self.password, self.algorithm = username, password, algorithm
        self.realm = "sim-camera"
        self.fault: str | None = None
        self.requests = 0
        self.served: list[bytes] = []  # images sent, in order
        self.authorizations: list[str] = []  # Authorization headers received
        self.port = 0
        self._frame = 0
        self._nonces: set[str] = set()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def url(self, path: str = "/snapshot.jpg") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._handlers):
                t.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    def next_image(self, kind: str) -> bytes:
        self._frame += 1
        if kind == "png":
            return png(8, 8, ((self._frame * 40) % 256, 128, 255 - (self._frame * 40) % 256))
        return JPEGS[self._frame % len(JPEGS)]

    # -- auth ----------------------------------------------------------------------------------

    def _h(self, text: str) -> str:
        fn = hashlib.sha256 if self.algorithm.upper().startswith("SHA-256") else hashlib.md5
        return fn(text.encode()).hexdigest()

    def _challenge(self, stale: bool = False) -> str:
        if self.auth == "basic":
            return f'Basic realm="{self.realm}", charset="UTF-8"'
        nonce = secrets.token_hex(16)
        self._nonces.add(nonce)
        extra = ", stale=true" if stale else ""
        return (
            f'Digest realm="{self.realm}", qop="auth", algorithm={self.algorithm}, nonce="{nonce}", '
            f'opaque="{secrets.token_hex(8)}"{extra}'
        )

    def _authorized(self, header: str | None) -> tuple[bool, bool]:
        """(accepted, stale nonce)."""
        if self.auth is None:
            return True, False
        if header is None:
            return False, False
        if self.auth == "basic":
            want = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return header == f"Basic {want}", False
        if not header.startswith("Digest "):
            return False, False
        fields: dict[str, str] = {}
        for part in header[7:].split(", "):
            key, _, value = part.partition("=")
            fields[key] = value[1:-1] if value.startswith('"') else value
        nonce = fields.get("nonce", "")
        ha1 = self._h(f"{self.username}:{self.realm}:{self.password}")
        if self.algorithm.upper().endswith("-SESS"):
            ha1 = self._h(f"{ha1}:{nonce}:{fields.get('cnonce', '')}")
        ha2 = self._h(f"GET:{fields.get('uri', '')}")
        want = self._h(f"{ha1}:{nonce}:{fields.get('nc', '')}:{fields.get('cnonce', '')}:auth:{ha2}")
        ok = fields.get("username") == self.username and fields.get("response") == want
        return ok and nonce in self._nonces, ok and nonce not in self._nonces

    def expire_nonces(self) -> None:
        """Forget every nonce handed out: the next digest request gets a stale=true challenge."""
        self._nonces.clear()

    # -- serving -------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            lines = head.decode("latin-1").split("\r\n")
            path = lines[0].split(" ")[1] if len(lines[0].split(" ")) == 3 else "/"
            headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            if "authorization" in headers:
                self.authorizations.append(headers["authorization"])
            await self._respond(writer, path, headers)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _respond(self, writer: asyncio.StreamWriter, path: str, headers: dict[str, str]) -> None:
        ok, stale = self._authorized(headers.get("authorization"))
        if not ok:
            self._send(
                writer, 401, "Unauthorized", b"login", "text/plain", (("WWW-Authenticate", self._challenge(stale)),)
            )
            return await writer.drain()
        if self.fault == "slow":
            await asyncio.Event().wait()  # until the client gives up (or stop() cancels us)
        if self.fault == "garbage":
            writer.write(b"\x00\xffSPLAT\r\n\r\n")
            return await writer.drain()
        if self.fault == "error500":
            self._send(writer, 500, "Internal Server Error", b"oops", "text/plain")
            return await writer.drain()
        if path not in ("/snapshot.jpg", "/snapshot.png"):
            self._send(writer, 404, "Not Found", b"no such page", "text/plain")
            return await writer.drain()
        kind = "png" if path.endswith(".png") else "jpeg"
        if self.fault == "wrong_type":
            self._send(writer, 200, "OK", b"<html>camera busy</html>", "text/html")
            return await writer.drain()
        body = self.next_image(kind)
        if self.fault == "bad_magic":
            body = b"GIF89a" + body[6:]
        if self.fault == "truncated":
            writer.write(self._head(200, "OK", len(body), f"image/{kind}") + body[: len(body) // 2])
            return await writer.drain()  # ... and close: the rest never comes
        self.served.append(body)
        if self.fault == "chunked":
            writer.write(self._head(200, "OK", None, f"image/{kind}", (("Transfer-Encoding", "chunked"),)))
            for i in range(0, len(body), 100):
                piece = body[i : i + 100]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            writer.write(b"0\r\n\r\n")
            return await writer.drain()
        self._send(writer, 200, "OK", body, f"image/{kind}")
        await writer.drain()

    @staticmethod
    def _head(status: int, reason: str, length: int | None, ctype: str, extra: Headers = ()) -> bytes:
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}", "Connection: close"]
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines += [f"{k}: {v}" for k, v in extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send(
        self, writer: asyncio.StreamWriter, status: int, reason: str, body: bytes, ctype: str, extra: Headers = ()
    ) -> None:
        writer.write(self._head(status, reason, len(body), ctype, extra) + body)


async def _demo() -> None:
    cam = CameraServer(auth="digest")
    await cam.start(8554)
    print(f"camera at {cam.url()} (digest admin/secret); Ctrl-C stops")
    try:
        await asyncio.Event().wait()
    finally:
        await cam.stop()


if __name__ == "__main__":
    asyncio.run(_demo())
