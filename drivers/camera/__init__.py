"""camera: still images from HTTP snapshot URLs, RTSP streams and V4L2 devices, as Blob readings."""

from drivers.camera.config import CameraConfig
from gateway.driver_api import API_VERSION, Manifest

MANIFEST = Manifest(
    name="camera",
    version="1.0.0",
    api_version=API_VERSION,
    description="Camera snapshots (HTTP basic/digest, RTSP and V4L2 through ffmpeg) on an interval and on demand",
    config=CameraConfig,
    factory="drivers.camera.driver:CameraDriver",
    kind="poll",
    extra=None,  # HTTP is built in; RTSP/V4L2 need the Debian package ffmpeg, not a Python library
    requires=(),
    writable=True,  # write("snapshot", True) takes a picture now
)
