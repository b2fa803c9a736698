"""The camera driver in the real scheduler against the simulated IP camera, ffmpeg for real,
and its HTTP / digest / image parsers against hostile input."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.camera import MANIFEST, ffmpeg, http, image
from gateway.driver_api import Blob, ConfigError
from gateway.testing import free_port, run_driver
from hil.devices.camera_http import JPEGS, CameraServer, png

FAST = {"interval": 0.05, "timeout": 1, "jitter": 0}
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="Debian package ffmpeg not installed")


async def until(cond: Callable[[], bool], within: float = 10.0) -> None:
    """Poll a condition (no timed assertions): fail only after a generous overall timeout."""
    async with asyncio.timeout(within):
        while True:
            if cond():
                return
            await asyncio.sleep(0.02)


def all_children() -> dict[int, str]:
    """Child processes of this process including zombies (state Z), unlike gateway.testing.children."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == os.getpid():
                found[int(entry.name)] = fields[0]
    return found


# -- HTTP snapshots ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "algorithm"), [(None, "MD5"), ("basic", "MD5"), ("digest", "MD5"), ("digest", "SHA-256")]
)
async def test_snapshots_with_each_login(auth: str | None, algorithm: str) -> None:
    cam = CameraServer(auth=auth, algorithm=algorithm)
    await cam.start()
    try:
        opts = {"username": "admin", "password": "secret"} if auth else {}
        async with run_driver(MANIFEST, name="gate", source="http", url=cam.url(), **opts, **FAST) as h:
            got = await h.sink.wait_for(3, point="image")
            assert [r.value for r in got[:3]] == [Blob(b, "image/jpeg") for b in cam.served[:3]]
            assert len({r.value.data for r in got[:3]}) == 3  # a new picture each time  # type: ignore[union-attr]
            assert all(r.unit is None and r.node == "gw-test" for r in got)
        if auth == "digest":  # nonce reused with a rising count: one request per snapshot after the first
            assert any("nc=00000002" in a for a in cam.authorizations)
            assert f"algorithm={algorithm}" in cam.authorizations[0]
            assert cam.requests <= len(cam.served) + 2
    finally:
        await cam.stop()


async def test_png_chunked_and_stale_nonce() -> None:
    cam = CameraServer(auth="digest")
    cam.fault = "chunked"
    await cam.start()
    try:
        async with run_driver(
            MANIFEST, name="c", source="http", url=cam.url("/snapshot.png"), username="admin", password="secret", **FAST
        ) as h:
            got = await h.sink.wait_for(1, point="image")
            assert got[0].value == Blob(cam.served[0], "image/png")
            assert cam.served[0].startswith(b"\x89PNG")
            cam.expire_nonces()  # the camera rotates its nonce: stale=true, the driver re-answers
            n = len(h.sink.readings)
            await h.sink.wait_for(n + 2)
            assert h.runner.stats.errors == 0
    finally:
        await cam.stop()


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("error500", "HTTP 500 Internal Server Error"),
        ("truncated", "body truncated: got 285 of 570 bytes"),
        ("wrong_type", "content type 'text/html' is not one of image/jpeg, image/png"),
        ("bad_magic", "not a JPEG or PNG image"),
        ("garbage", "not an HTTP/1.x status line"),
        ("slow", "poll timed out after 0.3s"),
    ],
)
async def test_faults_fail_the_poll_and_it_recovers(fault: str, message: str) -> None:
    cam = CameraServer()
    await cam.start()
    try:
        opts = dict(FAST, timeout=0.3)
        async with run_driver(MANIFEST, name="c", source="http", url=cam.url(), **opts) as h:
            await h.sink.wait_for(1)
            cam.fault = fault
            await until(lambda: h.runner.stats.errors >= 1)
            assert message in h.runner.stats.last_error
            assert h.runner.stats.state == "unavailable"
            cam.fault = None
            n = len(h.sink.readings)
            await h.sink.wait_for(n + 1)
            await until(lambda: h.runner.stats.state == "running")
    finally:
        await cam.stop()


async def test_wrong_password_and_missing_login() -> None:
    cam = CameraServer(auth="digest")
    await cam.start()
    try:
        async with (
            run_driver(
                MANIFEST, name="bad", source="http", url=cam.url(), username="admin", password="nope", **FAST
            ) as h,
            run_driver(MANIFEST, name="none", source="http", url=cam.url(), **FAST) as h2,
            run_driver(
                MANIFEST, name="good", source="http", url=cam.url(), username="admin", password="secret", **FAST
            ) as ok,
        ):
            await until(lambda: h.runner.stats.errors >= 1 and h2.runner.stats.errors >= 1)
            assert "refused the username/password" in h.runner.stats.last_error
            assert "wants a login" in h2.runner.stats.last_error
            await ok.sink.wait_for(3)  # the failing instances stall nobody
            assert h.sink.readings == [] and h2.sink.readings == []
    finally:
        await cam.stop()


async def test_too_large_and_type_not_allowed() -> None:
    cam = CameraServer()
    await cam.start()
    try:
        async with (
            run_driver(MANIFEST, name="big", source="http", url=cam.url(), max_size=100, **FAST) as big,
            run_driver(
                MANIFEST,
                name="jpeg_only",
                source="http",
                url=cam.url("/snapshot.png"),
                content_types=["image/jpeg"],
                **FAST,
            ) as only,
        ):
            await until(lambda: big.runner.stats.errors >= 1 and only.runner.stats.errors >= 1)
            assert "larger than max_size (100)" in big.runner.stats.last_error
            assert "'image/png' is not one of image/jpeg" in only.runner.stats.last_error
    finally:
        await cam.stop()


async def test_camera_down_then_up() -> None:
    port = free_port()
    async with run_driver(MANIFEST, name="c", source="http", url=f"http://127.0.0.1:{port}/snapshot.jpg", **FAST) as h:
        await until(lambda: h.runner.stats.errors >= 1)
        assert f"cannot fetch from 127.0.0.1:{port}" in h.runner.stats.last_error
        cam = CameraServer()
        await cam.start(port)
        try:
            await h.sink.wait_for(1, within=10)
        finally:
            await cam.stop()


async def test_on_demand_snapshot() -> None:
    cam = CameraServer()
    await cam.start()
    try:
        async with run_driver(
            MANIFEST, name="c", source="http", url=cam.url(), periodic=False, interval=0.05, jitter=0
        ) as h:
            await until(lambda: h.runner.stats.polls >= 3)
            assert h.sink.readings == [] and cam.requests == 0  # periodic off: polls take no pictures
            await h.runner.write("snapshot", True)
            assert [r.value for r in h.sink.readings] == [Blob(cam.served[0], "image/jpeg")]
            with pytest.raises(ConfigError, match="unknown writable point"):
                await h.runner.write("zoom", 2)
            with pytest.raises(ConfigError, match="snapshot=true"):
                await h.runner.write("snapshot", False)
            cam.fault = "error500"
            with pytest.raises(Exception, match="HTTP 500"):
                await h.runner.write("snapshot", True)
    finally:
        await cam.stop()


async def test_sim_digest_agrees_with_curl() -> None:
    """The simulated camera's digest check is right: curl's own implementation logs in."""
    if shutil.which("curl") is None:
        pytest.skip("curl not installed (hil/system-deps.sh installs it)")
    for algorithm, flag in (("MD5", "--digest"), ("SHA-256", "--digest")):
        cam = CameraServer(auth="digest", algorithm=algorithm)
        await cam.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                "curl", "-sf", flag, "-u", "admin:secret", "-o", "-", cam.url(), stdout=asyncio.subprocess.PIPE
            )
            out, _ = await proc.communicate()
            assert proc.returncode == 0, f"curl refused by the sim ({algorithm})"
            assert out == cam.served[0]
        finally:
            await cam.stop()


# -- RTSP / V4L2 through ffmpeg ---------------------------------------------------------------------


@needs_ffmpeg
async def test_ffmpeg_capture_from_a_lavfi_source() -> None:
    # No RTSP server can run here, so the capture path (child process, bounded stdout, JPEG
    # check) runs on ffmpeg's built-in test source: only the input options differ from RTSP/V4L2.
    argv = ffmpeg.command(ffmpeg.find("ffmpeg"), ["-f", "lavfi", "-i", "testsrc=size=64x48:rate=5"], 5, 2)
    data = await ffmpeg.capture(argv, 1 << 20)
    assert image.sniff(data) == "image/jpeg"
    with pytest.raises(ffmpeg.FfmpegError, match="larger than max_size"):
        await ffmpeg.capture(argv, 100)
    assert all_children() == {}


@needs_ffmpeg
async def test_rtsp_errors_and_a_hung_stream_is_killed_without_zombies() -> None:
    closed = free_port()
    async with run_driver(MANIFEST, name="r", source="rtsp", url=f"rtsp://127.0.0.1:{closed}/cam", **FAST) as h:
        await until(lambda: h.runner.stats.errors >= 1)
        assert "ffmpeg exited with status" in h.runner.stats.last_error
    # a "camera" that accepts the connection and never answers: ffmpeg hangs, the host's timeout
    # cancels the poll, and the capture kills and reaps the child
    hung: list[asyncio.StreamWriter] = []
    handlers: list[asyncio.Task[None]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        opts = dict(FAST, timeout=0.5)
        async with run_driver(MANIFEST, name="r", source="rtsp", url=f"rtsp://127.0.0.1:{port}/cam", **opts) as h:
            await until(lambda: h.runner.stats.timeouts >= 2)
            await until(lambda: all_children() == {})  # killed and reaped, not a zombie
    finally:
        for w in hung:
            w.close()
        for t in handlers:  # Python 3.11's wait_closed() does not wait for connection handlers
            t.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        server.close()
        await server.wait_closed()
    assert all_children() == {}


async def test_ffmpeg_missing_names_the_debian_package() -> None:
    async with run_driver(
        MANIFEST, name="r", source="rtsp", url="rtsp://127.0.0.1/cam", ffmpeg="ffmpeg-not-here", **FAST
    ) as h:
        await until(lambda: h.runner.stats.state == "failed")
        assert "install the Debian package 'ffmpeg'" in h.runner.stats.last_error


@needs_ffmpeg
async def test_v4l2_device_missing_is_not_ready() -> None:
    async with run_driver(MANIFEST, name="v", source="v4l2", device="/dev/video-none", **FAST) as h:
        await until(lambda: h.runner.stats.restarts >= 1)
        assert "no video device /dev/video-none" in h.runner.stats.last_error


def test_config_checks() -> None:
    bad = [
        {"source": "http"},
        {"source": "http", "url": "rtsp://x/"},
        {"source": "rtsp", "url": "http://x/"},
        {"source": "http", "url": "http://u:p@x/"},
        {"source": "v4l2", "device": "video0"},
        {"source": "http", "url": "http://x/", "content_types": ["image/gif"]},
    ]
    for options in bad:
        with pytest.raises(ValueError):
            MANIFEST.config.model_validate({"driver": "camera", **options})


# -- parsers: known answers and hostile input --------------------------------------------------------

RFC7616 = http.Challenge(
    "digest",
    {
        "realm": "http-auth@example.org",
        "qop": "auth, auth-int",
        "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    },
)
CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize(
    ("algorithm", "response"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_digest_rfc7616_examples(algorithm: str, response: str) -> None:
    ch = http.Challenge("digest", dict(RFC7616.params, algorithm=algorithm))
    value = http.digest_header(ch, "Mufasa", "Circle of Life", "GET", "/dir/index.html", 1, CNONCE)
    assert f'response="{response}"' in value
    assert "qop=auth, nc=00000001" in value and 'opaque="FQhe/' in value


def test_digest_rfc2617_example() -> None:
    ch = http.Challenge("digest", {"realm": "testrealm@host.com", "qop": "auth,auth-int",
                                   "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093"})  # fmt: skip
    value = http.digest_header(ch, "Mufasa", "Circle Of Life", "GET", "/dir/index.html", 1, "0a4f113b")
    assert 'response="6629fae49393a05397450978507c4ef1"' in value


def test_parse_challenges() -> None:
    got = http.parse_challenges(
        ['Digest realm="a, \\"b\\"", qop="auth,auth-int", algorithm=SHA-256, nonce="n1", Digest realm=r, nonce=n2',
         'Negotiate abc==, Basic realm="x y", charset="UTF-8"']
    )  # fmt: skip
    assert [c.scheme for c in got] == ["digest", "digest", "negotiate", "basic"]
    assert got[0].params == {"realm": 'a, "b"', "qop": "auth,auth-int", "algorithm": "SHA-256", "nonce": "n1"}
    assert got[1].params == {"realm": "r", "nonce": "n2"}
    assert got[2].params == {"token68": "abc=="}
    assert got[3].params == {"realm": "x y", "charset": "UTF-8"}


def test_parse_head_and_body_helpers() -> None:
    r = http.parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 12\r\n\r\n")
    assert (r.status, r.reason, r.header("content-type"), http.content_length(r)) == (200, "OK", "image/jpeg", 12)
    assert http.decode_chunked(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n", 10) == b"abcde"
    with pytest.raises(http.Truncated):
        http.decode_chunked(b"3\r\nabc\r\n", 10)
    with pytest.raises(http.TooLarge):
        http.decode_chunked(b"b\r\nabcdefghijk\r\n0\r\n\r\n", 10)
    with pytest.raises(http.HttpError):
        http.content_length(http.parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"))


def test_image_checks() -> None:
    p = png(2, 2, (1, 2, 3))
    assert image.check(p, "image/png", ["image/png"], 1000) == "image/png"
    assert image.check(JPEGS[0], "image/JPEG; q=1", ["image/jpeg"], 1000) == "image/jpeg"
    for data, declared, match in [
        (p[:-3], "image/png", "IEND"),
        (JPEGS[0][:-2], "image/jpeg", "FFD9"),
        (p, "image/jpeg", "declared image/jpeg but the bytes are image/png"),
        (b"", "image/png", "empty"),
    ]:
        with pytest.raises(image.ImageError, match=match):
            image.check(data, declared, ["image/jpeg", "image/png"], 1000)


@given(st.binary(max_size=400))
def test_head_parser_only_raises_http_error(raw: bytes) -> None:
    for candidate in (raw, b"HTTP/1.1 200 OK\r\n" + raw):
        try:
            r = http.parse_head(candidate)
            http.content_length(r)
        except http.HttpError:
            pass


@given(st.binary(max_size=300), st.integers(0, 1000))
def test_chunked_decoder_only_raises_http_error(raw: bytes, limit: int) -> None:
    try:
        out = http.decode_chunked(raw, limit)
    except http.HttpError:
        return
    assert len(out) <= limit


@given(st.lists(st.text(max_size=200), max_size=3))
def test_challenge_parser_and_digest_only_raise_http_error(values: list[str]) -> None:
    try:
        challenges = http.parse_challenges(values)
    except http.HttpError:
        return
    for ch in challenges:
        try:
            value = http.digest_header(ch, "u", "p", "GET", "/", 1, "c")
        except http.HttpError:
            continue
        assert value.startswith("Digest ")


@given(
    st.dictionaries(
        st.sampled_from(["realm", "nonce", "qop", "algorithm", "opaque", "stale", "x"]),
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
    )
)
def test_challenge_round_trip(params: dict[str, str]) -> None:
    text = "Digest " + ", ".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                                 for k, v in params.items())  # fmt: skip
    got = http.parse_challenges([text])
    assert len(got) == 1 and got[0].params == params


@given(st.binary(max_size=200))
def test_image_sniffer_only_raises_image_error(raw: bytes) -> None:
    try:
        image.check(raw, "image/jpeg", ["image/jpeg", "image/png"], 150)
    except image.ImageError:
        pass
