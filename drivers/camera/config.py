"""The camera driver's options."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from gateway.driver_api import DriverConfig
from gateway.schema import Field, model_validator
from gateway.units import ByteSize, Duration


class CameraConfig(DriverConfig):
    """One camera: where images come from, how to log in, what an acceptable image is."""

    interval: Duration = Field(default=60.0, gt=0, description="Time between periodic snapshots.")
    timeout: Duration = Field(default=10.0, gt=0, description="Longest one snapshot may take (then it is abandoned).")
    source: Literal["http", "rtsp", "v4l2"] = Field(
        description="http: a snapshot URL; rtsp: one frame of a stream (ffmpeg); v4l2: a local camera (ffmpeg)."
    )
    url: str = Field(default="", description="http(s):// snapshot URL or rtsp(s):// stream URL.")
    device: str = Field(default="/dev/video0", description="v4l2: the video device.")
    username: str = Field(default="", description="Camera login (HTTP basic/digest; RTSP: put it in the URL).")
    password: str = Field(default="", description="Camera password.")
    auth: Literal["auto", "basic", "digest", "none"] = Field(
        default="auto", description="HTTP authentication: auto answers whatever the camera asks (digest preferred)."
    )
    verify_tls: bool = Field(default=True, description="https: check the camera's certificate.")
    content_types: list[Literal["image/jpeg", "image/png"]] = Field(
        default_factory=lambda: ["image/jpeg", "image/png"], min_length=1, description="Accepted image types."
    )
    max_size: ByteSize = Field(default=8 * 1024 * 1024, gt=0, le=64 * 1024 * 1024, description="Largest image.")
    point: str = Field(default="image", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Point name.")
    periodic: bool = Field(
        default=True, description="Take a snapshot every interval; false: only on demand (write snapshot=true)."
    )
    ffmpeg: str = Field(default="ffmpeg", description="rtsp/v4l2: the ffmpeg program (Debian package ffmpeg).")
    rtsp_transport: Literal["tcp", "udp"] = Field(default="tcp", description="rtsp: RTP over TCP or UDP.")
    input_format: str = Field(default="", pattern=r"^[a-z0-9_]{0,32}$", description="v4l2: e.g. mjpeg, yuyv422.")
    video_size: str = Field(default="", pattern=r"^$|^\d{2,5}x\d{2,5}$", description="v4l2: e.g. 1280x720.")
    skip_frames: int = Field(default=0, ge=0, le=100, description="rtsp/v4l2: frames to drop first (auto-exposure).")
    jpeg_quality: int = Field(default=3, ge=2, le=31, description="rtsp/v4l2: ffmpeg -q:v, 2 best .. 31 smallest.")

    @model_validator(mode="after")
    def _check(self) -> CameraConfig:
        scheme = urlsplit(self.url).scheme
        if self.source == "http" and scheme not in ("http", "https"):
            raise ValueError("source http needs url: http://... or https://...")
        if self.source == "rtsp" and scheme not in ("rtsp", "rtsps"):
            raise ValueError("source rtsp needs url: rtsp://...")
        if self.source == "http" and (urlsplit(self.url).username or urlsplit(self.url).password):
            raise ValueError("put HTTP credentials in username/password, not in the url")
        if self.source == "v4l2" and not self.device.startswith("/dev/"):
            raise ValueError("device must be a /dev path, e.g. /dev/video0")
        return self
