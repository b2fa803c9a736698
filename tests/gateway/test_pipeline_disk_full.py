"""A full disk while an uploaded image is being forgotten: the blob uploader reports, retries and
recovers, and the pipeline still closes cleanly (found by the rig's disk-full scenario)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path

import pytest

from gateway.driver_api import Blob, Reading
from gateway.pipeline import BufferedPipeline
from gateway.scheduler import NodeTracker
from hil.devices.camera_http import JPEGS
from hil.faults import DiskFull, until
from hil.mosquitto import Mosquitto
from hil.rig import RigReceiver
from tests.gateway.helpers import make_config

T0 = 1_795_000_000_000_000_000


@pytest.mark.skipif(bool(DiskFull.unavailable_reason()), reason=DiskFull.unavailable_reason() or "-")
async def test_blob_upload_survives_a_full_disk(tmp_path: Path, broker: Mosquitto,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "sensegate")
    with DiskFull(tmp_path / "s", size="4m") as disk:
        cfg = make_config(tmp_path / "s", broker.url)
        rx = RigReceiver(broker.url, tmp_path / "s/keys/device.pub.pem", "gw-test")
        await rx.start()
        await asyncio.to_thread(broker.stop)  # the image waits in the blob store
        p = BufferedPipeline(cfg, NodeTracker())
        await p.start()
        try:
            p.put(Reading("gw-test", "image", T0, Blob(JPEGS[0], "image/jpeg")))
            await until(lambda: p.store.stats.committed == 1, within=15, what="the commit")
            disk.fill()  # the upload will work, forgetting the uploaded image will not
            await asyncio.to_thread(broker.start)
            sha = hashlib.sha256(JPEGS[0]).hexdigest()
            await until(lambda: sha in rx.rx.blobs, within=30, what="the image upload")
            # forgetting the image fails at once, or when its transaction commits
            await until(lambda: "blob upload error" in caplog.text or "buffer commit failed" in caplog.text,
                        within=30, what="the error report")
            disk.free()
            await until(lambda: p.store.stats.readings == 0, within=30, what="the batch acknowledged")
            await until(lambda: rx.rx.summary().blobs_verified == 1, within=30, what="a verified image")
            async with asyncio.timeout(30):  # the uploader is alive: it retries and forgets the image
                while await p.store.next_blob() is not None:  # noqa: ASYNC110 (state in the database)
                    await asyncio.sleep(0.2)
        finally:
            await p.close()  # raised the disk error from the dead uploader before the fix
            await rx.stop()
