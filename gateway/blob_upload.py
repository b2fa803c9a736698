"""Blob upload: stored blobs (camera images) go up apart from the batches that name them.

Oldest first, over the first connected uplink (each uplink's ``send_blob``), one at a time; a
blob is deleted from the store once the uplink says the far end has all of it. An interrupted
upload is tried again a second later; the blob stays in the store meanwhile (and its batch
declares it if the store's bound drops it).
"""

from __future__ import annotations

import asyncio
import logging

from gateway.store import Store
from gateway.uplinks import Uplink

log = logging.getLogger("sensegate.pipeline")


class BlobUploader:
    """One task that uploads what the store holds whenever it is woken (a new blob, an uplink
    came up, the store's file opened)."""

    def __init__(self, store: Store, uplinks: list[Uplink]) -> None:
        self.store = store
        self.uplinks = uplinks
        self._wake = asyncio.Event()
        self._seen_commits = 0  # the intake's blob_commits at the last look
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name="blob-upload")

    def wake(self) -> None:
        """Look for blobs to upload (an uplink came up or dropped, the store opened)."""
        self._wake.set()

    def committed(self) -> None:
        """Readings were committed: wake only if a new blob came with them."""
        if self.store.intake.blob_commits != self._seen_commits:
            self._seen_commits = self.store.intake.blob_commits
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._upload()
            except Exception:  # e.g. disk full when deleting an uploaded blob: it is sent again later
                log.exception("blob upload error; retrying")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def _upload(self) -> None:
        while self.store.opened.is_set():
            up = next((u for u in self.uplinks if u.connected), None)
            if up is None:
                return
            blob = await self.store.next_blob()
            if blob is None:
                return
            sha, content_type, data = blob
            try:
                await up.send_blob(sha, content_type, data)
            except (ConnectionError, TimeoutError) as e:
                log.info("blob upload over %s interrupted (%s); will resume", up.name, e)
                await asyncio.sleep(1.0)
                continue
            await self.store.blob_done(sha)
