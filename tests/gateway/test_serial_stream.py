"""gateway.serial_stream against a real pseudo-terminal: data flow, unplug, silence, open errors."""

from __future__ import annotations

import asyncio
import errno
import os
import pathlib
from collections.abc import Iterator

import pytest
import serial

from gateway.driver_api import NotReady, PollError
from gateway.serial_stream import SerialStream, _describe_open_error
from hil.devices.pty import PtyPort


@pytest.fixture
def port() -> Iterator[PtyPort]:
    p = PtyPort()
    p.plug()
    yield p
    p.close()


async def _wait(cond: object, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not cond():  # type: ignore[operator]  # noqa: ASYNC110 (polls plain attributes)
            await asyncio.sleep(0.01)


async def test_bytes_reach_the_callback_then_unplug_raises_poll_error(port: PtyPort) -> None:
    got = bytearray()
    stream = SerialStream(port.path, 9600, got.extend)
    await stream.open()
    assert stream.is_open
    task = asyncio.create_task(stream.run())
    try:
        port.write(b"hello\x00\xff")
        await _wait(lambda: len(got) >= 7)
        assert bytes(got) == b"hello\x00\xff"
        assert stream.bytes_read == 7
        port.unplug()
        with pytest.raises(PollError, match="unplugged"):
            await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
        stream.close()
        stream.close()  # idempotent
    assert not stream.is_open


async def test_missing_port_is_not_ready_and_names_the_path(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "ttyNOPE")
    stream = SerialStream(path, 9600, lambda b: None)
    with pytest.raises(NotReady, match=f"{path} not found"):
        await stream.open()
    stream.close()  # safe after a failed open


async def test_unplugged_then_replugged_port_opens_again(port: PtyPort) -> None:
    port.unplug()
    stream = SerialStream(port.path, 9600, lambda b: None)
    with pytest.raises(NotReady, match="not found"):
        await stream.open()
    port.plug()
    await stream.open()
    stream.close()


def test_permission_denied_names_the_dialout_group() -> None:
    # Root (CI) bypasses file permissions, so feed pyserial's own error shape to the mapper.
    e = serial.SerialException(errno.EACCES, "could not open port /dev/ttyS0: [Errno 13] Permission denied")
    why = str(_describe_open_error("/dev/ttyS0", e))
    assert "/dev/ttyS0" in why and "dialout" in why


@pytest.fixture
def regular_file(tmp_path: pathlib.Path) -> str:
    path = tmp_path / "notatty"
    path.touch()
    return str(path)


async def test_a_regular_file_is_not_a_serial_port(regular_file: str) -> None:
    path = regular_file
    stream = SerialStream(path, 9600, lambda b: None)
    with pytest.raises(NotReady, match="notatty"):
        await stream.open()


async def test_silence_longer_than_idle_timeout_raises(port: PtyPort) -> None:
    stream = SerialStream(port.path, 9600, lambda b: None, idle_timeout=0.2)
    await stream.open()
    try:
        port.write(b"x")  # data pushes the deadline back; then silence
        with pytest.raises(PollError, match="silent"):
            await asyncio.wait_for(stream.run(), 5)
    finally:
        stream.close()


async def test_a_failing_callback_surfaces_as_poll_error(port: PtyPort) -> None:
    def boom(data: bytes) -> None:
        raise ValueError("parser bug")

    stream = SerialStream(port.path, 9600, boom)
    await stream.open()
    try:
        port.write(b"x")
        with pytest.raises(PollError, match="ValueError: parser bug"):
            await asyncio.wait_for(stream.run(), 5)
    finally:
        stream.close()


async def test_run_before_open_and_close_during_run(port: PtyPort) -> None:
    stream = SerialStream(port.path, 9600, lambda b: None)
    with pytest.raises(PollError, match="not open"):
        await stream.run()
    await stream.open()
    task = asyncio.create_task(stream.run())
    await asyncio.sleep(0.01)
    stream.close()
    with pytest.raises(PollError, match="closed by the driver"):
        await asyncio.wait_for(task, 5)
