"""The camera driver: one Blob reading per image, periodic and on demand."""

from __future__ import annotations

import os
import ssl

from drivers.camera import ffmpeg, http, image
from drivers.camera.config import CameraConfig
from gateway.driver_api import Blob, ConfigError, Driver, DriverContext, Emit, NotReady, PollError, Value


class CameraDriver(Driver):
    """Takes a snapshot every interval (``periodic``) and on ``write("snapshot", True)``.

    The on-demand snapshot is taken inside ``write`` (the host serialises it with polls and
    applies the instance's timeout) and emitted at once through the host's emit, which the
    driver keeps from its first poll; ``write`` returns when the image is handed over, or raises.
    """

    config: CameraConfig

    def __init__(self, config: CameraConfig, ctx: DriverContext) -> None:
        super().__init__(config, ctx)
        self._emit: Emit | None = None
        self._pending: Blob | None = None  # taken on demand before any poll handed us emit
        self._target: http.Target | None = None
        self._auth = http.Auth(config.username, config.password, config.auth)
        self._ssl: ssl.SSLContext | None = None
        self._argv: list[str] = []

    async def setup(self) -> None:
        cfg = self.config
        if cfg.source == "http":
            try:
                self._target = http.Target.parse(cfg.url)
            except http.HttpError as e:
                raise ConfigError(str(e)) from e
            if self._target.scheme == "https":
                self._ssl = await self.ctx.run_blocking(ssl.create_default_context)
                if not cfg.verify_tls:
                    self._ssl.check_hostname = False
                    self._ssl.verify_mode = ssl.CERT_NONE
            return
        try:
            program = ffmpeg.find(cfg.ffmpeg)
        except ffmpeg.FfmpegMissing as e:
            raise ConfigError(str(e)) from e
        if cfg.source == "rtsp":
            inputs = ffmpeg.rtsp_args(cfg.url, cfg.rtsp_transport, cfg.timeout)
        else:
            if not await self.ctx.run_blocking(os.path.exists, cfg.device):
                raise NotReady(f"no video device {cfg.device} (camera unplugged?)")
            inputs = ffmpeg.v4l2_args(cfg.device, cfg.input_format, cfg.video_size)
        self._argv = ffmpeg.command(program, inputs, cfg.jpeg_quality, cfg.skip_frames)

    async def poll(self, emit: Emit) -> None:
        self._emit = emit
        if self._pending is not None:
            blob, self._pending = self._pending, None
            emit(self.config.point, blob)
        if self.config.periodic:
            emit(self.config.point, await self._snapshot())

    async def write(self, point: str, value: Value) -> None:
        if point != "snapshot":
            raise ConfigError(f"unknown writable point {point!r} (writable: snapshot)")
        if value is not True:
            raise ConfigError("write snapshot=true to take a picture")
        blob = await self._snapshot()
        if self._emit is None:
            self._pending = blob  # emitted by the next poll
        else:
            self._emit(self.config.point, blob)

    async def _snapshot(self) -> Blob:
        cfg = self.config
        if cfg.source == "http":
            data, declared = await self._http()
        else:
            try:
                data = await ffmpeg.capture(self._argv, cfg.max_size)
            except ffmpeg.FfmpegError as e:
                raise PollError(str(e)) from e
            except OSError as e:
                raise PollError(f"cannot run ffmpeg: {e.strerror or e}") from e
            declared = "image/jpeg"
        try:
            kind = image.check(data, declared, list(cfg.content_types), cfg.max_size)
        except image.ImageError as e:
            raise PollError(str(e)) from e
        return Blob(data, kind)

    async def _http(self) -> tuple[bytes, str | None]:
        assert self._target is not None
        t = self._target
        try:
            resp = await http.get(t, self._auth, max_size=self.config.max_size, ssl_context=self._ssl)
        except http.HttpError as e:
            raise PollError(str(e)) from e
        except (OSError, ssl.SSLError) as e:
            raise PollError(f"cannot fetch from {t.host}:{t.port}: {e.strerror or e}") from e
        if resp.status == 401:
            if not self._auth.configured:
                raise PollError("HTTP 401: the camera wants a login; set username and password")
            raise PollError("HTTP 401: the camera refused the username/password")
        if resp.status != 200:
            raise PollError(f"HTTP {resp.status} {resp.reason[:60]}".rstrip())
        return resp.body, resp.header("content-type") or ""

    async def close(self) -> None:
        # ffmpeg children never outlive a capture (ffmpeg.capture kills and reaps on any exit),
        # and HTTP connections are per request: nothing stays open between calls.
        self._target = None
