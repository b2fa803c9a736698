"""Checking that bytes from a camera are one whole JPEG or PNG image; never imports `gateway`."""

from __future__ import annotations

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
JPEG_SOI, JPEG_EOI = b"\xff\xd8\xff", b"\xff\xd9"


class ImageError(ValueError):
    """Not an acceptable image."""


def media_type(content_type: str | None) -> str:
    """'image/jpeg' from 'image/JPEG; charset=x'; '' when absent."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def sniff(data: bytes) -> str:
    """The media type the bytes really are, checking start and end markers; ImageError otherwise."""
    if data.startswith(JPEG_SOI):
        if not data.rstrip(b"\x00\r\n ").endswith(JPEG_EOI):  # some cameras pad after EOI
            raise ImageError("JPEG without its end marker (FFD9): truncated image")
        return "image/jpeg"
    if data.startswith(PNG_SIGNATURE):
        if not data.endswith(PNG_IEND):
            raise ImageError("PNG without its IEND chunk: truncated image")
        return "image/png"
    raise ImageError(f"not a JPEG or PNG image (starts {data[:8].hex()})")


def check(data: bytes, declared: str | None, allowed: list[str], max_size: int) -> str:
    """The image's content type after every check: declared type allowed, magic bytes agree, size."""
    if not data:
        raise ImageError("empty image")
    if len(data) > max_size:
        raise ImageError(f"image of {len(data)} bytes is larger than max_size ({max_size})")
    declared_type = media_type(declared) if declared is not None else None
    if declared_type is not None and declared_type not in allowed:
        raise ImageError(f"content type {declared_type[:40]!r} is not one of {', '.join(allowed)}")
    kind = sniff(data)
    if kind not in allowed:
        raise ImageError(f"image type {kind} is not one of {', '.join(allowed)}")
    if declared_type is not None and declared_type != kind:
        raise ImageError(f"declared {declared_type} but the bytes are {kind}")
    return kind
