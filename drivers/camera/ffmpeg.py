"""One still frame from RTSP or V4L2 through an ffmpeg child process; never imports `gateway`.

The child is started with asyncio (no threads), its output is read with a hard size limit,
and it is always killed and reaped when the capture ends, fails, times out or is cancelled:
no zombie is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil

STDERR_KEEP = 2048
DEBIAN_PACKAGE = "ffmpeg"


class FfmpegError(RuntimeError):
    """ffmpeg failed or produced unusable output."""


class FfmpegMissing(FfmpegError):
    """The ffmpeg program is not installed."""


def find(program: str) -> str:
    """The absolute path of ffmpeg, or FfmpegMissing naming the Debian package."""
    path = shutil.which(program)
    if path is None:
        raise FfmpegMissing(
            f"{program!r} not found: RTSP and V4L2 cameras need ffmpeg; install the Debian package "
            f"'{DEBIAN_PACKAGE}' (sudo apt-get install {DEBIAN_PACKAGE})"
        )
    return path


def rtsp_args(url: str, transport: str, timeout_s: float) -> list[str]:
    """Input options for an RTSP stream (ffmpeg's own socket timeout too, in microseconds)."""
    return ["-rtsp_transport", transport, "-timeout", str(int(timeout_s * 1_000_000)), "-i", url]


def v4l2_args(device: str, input_format: str = "", video_size: str = "") -> list[str]:
    """Input options for a V4L2 device such as /dev/video0."""
    args = ["-f", "v4l2"]
    if input_format:
        args += ["-input_format", input_format]
    if video_size:
        args += ["-video_size", video_size]
    return [*args, "-i", device]


def command(ffmpeg: str, input_args: list[str], quality: int = 3, skip_frames: int = 0) -> list[str]:
    """The whole command line: one frame, encoded as JPEG, to stdout."""
    out = ["-frames:v", "1", "-f", "image2pipe", "-c:v", "mjpeg", "-q:v", str(quality)]
    if skip_frames:
        out = ["-vf", f"select=gte(n\\,{skip_frames})", *out]
    return [ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", *input_args, *out, "pipe:1"]


async def capture(argv: list[str], max_size: int) -> bytes:
    """Run ffmpeg, return its stdout (at most max_size bytes); FfmpegError on failure."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    readers = (asyncio.ensure_future(_read_bounded(proc.stdout, max_size)), asyncio.ensure_future(_tail(proc.stderr)))
    try:
        out = await readers[0]
        rc = await proc.wait()
        err = await readers[1]
    finally:
        # cancelled (timeout, close) or output too large: stop the readers and kill the child
        # first, without awaiting, so a second cancellation during the awaits below leaves no
        # task behind; then reap
        for task in readers:
            task.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await asyncio.gather(*readers, return_exceptions=True)
        if proc.returncode is None:
            await proc.wait()
    if rc != 0:
        last = err.decode("utf-8", "replace").strip().splitlines()
        raise FfmpegError(f"ffmpeg exited with status {rc}: {last[-1][:200] if last else 'no message'}")
    if not out:
        raise FfmpegError("ffmpeg produced no image")
    return out


async def _read_bounded(stream: asyncio.StreamReader, limit: int) -> bytes:
    data = bytearray()
    while chunk := await stream.read(65536):
        data += chunk
        if len(data) > limit:
            raise FfmpegError(f"ffmpeg output larger than max_size ({limit} bytes)")
    return bytes(data)


async def _tail(stream: asyncio.StreamReader) -> bytes:
    kept = b""
    while chunk := await stream.read(4096):
        kept = (kept + chunk)[-STDERR_KEEP:]
    return kept
