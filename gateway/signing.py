"""Signing batches with the device key of the moment.

The pipeline opens the device key at start: a PEM file, or a PKCS#11 token's key, opened on a
thread of its own within TOKEN_OPEN_TIMEOUT (loading a token library and logging in block, and
a hung token must not hang start). Each batch is made and signed under one lock, so a switch
to a next key (gateway/devicekey.py) happens between two batches, never during one, and the
first batches after a switch carry its rotation document (label ``kr``). A key that cannot
sign (a token that went away) is said once per outage and counted; the readings stay in the
store until it signs again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from gateway.batcher import Batcher
from gateway.config.validate import GatewayConfig
from gateway.devicekey import DeviceKey, KeyFiles, open_current, prepare_next
from gateway.keys import KeyFileError, Signer, alg_of, fingerprint
from gateway.pkcs11uri import is_pkcs11
from gateway.uplinks import Uplink
from gateway.wire import Batch

log = logging.getLogger("sensegate.pipeline")
TOKEN_OPEN_TIMEOUT = 30.0
"""Longest a start waits for a PKCS#11 token to load, log in and sign its probe."""


def key_path(cfg: GatewayConfig) -> Path:
    """The device key file a config uses (for a token key: the directory its public key goes to)."""
    g = cfg.config.gateway
    return Path(g.key_file) if g.key_file and not is_pkcs11(g.key_file) else Path(g.state_dir) / "keys" / "device.key"


def key_files(cfg: GatewayConfig) -> KeyFiles:
    """The device key a config names, with its next key and rotation documents (gateway/devicekey.py)."""
    return KeyFiles.of(cfg.config.gateway.key_file, key_path(cfg))


async def open_device_key(cfg: GatewayConfig) -> Signer:
    """The signing key a config names: a PEM file, or a PKCS#11 token's key opened on a thread of
    its own (loading a token library and logging in block, and a hung token must not hang start).
    A key rotation a stop interrupted is finished first."""
    files = key_files(cfg)
    if not files.token:
        return open_current(files)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Signer] = loop.create_future()

    def settle(key: Signer | None, error: BaseException | None) -> None:
        if done.done():  # start gave up waiting; a key that came late is closed again
            if key is not None:
                key.close()
        elif error is not None:
            done.set_exception(error)
        else:
            done.set_result(key)  # type: ignore[arg-type]

    def opener() -> None:
        try:
            key = open_current(files)
        except Exception as e:
            loop.call_soon_threadsafe(settle, None, e)
        else:
            loop.call_soon_threadsafe(settle, key, None)

    threading.Thread(target=opener, name="token-open", daemon=True).start()
    try:
        async with asyncio.timeout(TOKEN_OPEN_TIMEOUT):
            return await asyncio.shield(done)
    except TimeoutError:
        done.cancel()
        raise KeyFileError(f"the PKCS#11 token did not answer within {TOKEN_OPEN_TIMEOUT:g} s") from None


class Position(Protocol):
    """Where the gateway's batches are: a key switch is recorded at a batch number of a stream
    (the store says)."""

    @property
    def stream(self) -> int: ...

    @property
    def next_bseq(self) -> int: ...


class BatchSigning:
    """The device key of the moment and the batcher that signs with it, for one pipeline."""

    def __init__(self, cfg: GatewayConfig, position: Position, uplinks: list[Uplink]) -> None:
        self.cfg = cfg
        self.position = position
        self.uplinks = uplinks  # a switch is announced on each connected one
        self.key: Signer | None = None
        self.device: DeviceKey | None = None
        self.batcher: Batcher | None = None  # made at open; signs with the device key of the moment
        self._lock = asyncio.Lock()  # a key switch happens between two batches, never during one
        self._failing = 0.0  # monotonic time the key (a token) stopped signing; 0: it signs
        self.errors = 0  # batches the key could not sign

    async def open(self) -> None:
        """Open the device key the config names; KeyFileError says why it cannot sign."""
        self.key = await open_device_key(self.cfg)
        self.device = DeviceKey(key_files(self.cfg), self.key, self.cfg.config.gateway.id)
        c = self.cfg.config
        if alg_of(self.key) != c.batch.alg:
            where = c.gateway.key_file or key_path(self.cfg)
            raise KeyFileError(f"batch.alg is {c.batch.alg} but {where} is an {alg_of(self.key)} key")
        self.batcher = Batcher(self.key, c.gateway.id, c.batch)

    @property
    def busy(self) -> bool:
        """A switch whose wait was cancelled is still finishing: no batch is signed meanwhile."""
        return self.device is not None and self.device.busy

    async def sign(self, make: Callable[[Batcher], Awaitable[Batch | None]]) -> Batch | None:
        """Run ``make`` (the store's make_batch) with the batcher of the moment, first switching
        to a next key if ``sensegate keys rotate`` made one. KeyFileError: the key cannot sign."""
        assert self.device is not None and self.batcher is not None
        async with self._lock:
            if self.device.waiting():  # `sensegate keys rotate` made a next key
                try:
                    await self._switch()
                except (KeyFileError, OSError) as e:
                    log.error("cannot switch to the next device key (%s); signing with the current one", e)
            self.key = self.device.signer
            carry = self.device.carry(self.position.stream, self.position.next_bseq)
            self.batcher.use(self.key, carry.get("kr") if carry else None)
            try:
                made = await make(self.batcher)
            except KeyFileError as e:
                self._failed(e)
                raise
        if self._failing and made is not None:
            log.warning("the device key signs again, after %.0f s and %d failed attempt(s)",
                        time.monotonic() - self._failing, self.errors)
            self._failing = 0.0
        return made

    def _failed(self, e: KeyFileError) -> None:
        """Count a batch the key could not sign; say it once per outage, not once a second."""
        self.errors += 1
        if not self._failing:
            self._failing = time.monotonic()
            log.error("cannot sign batches: %s; readings stay buffered, trying again every second", e)

    def announce(self, uplink: Uplink) -> None:
        """Publish the retained rotation history (receivers that missed a rotation learn it) where
        the uplink has a downlink (MQTT); CoAP receivers learn it from the batches."""
        payload = self.device.announcement() if self.device is not None else None
        down = uplink.downlink
        if payload is not None and down is not None:
            from gateway.mqtt import keys_topic

            down.publish(keys_topic(down.topic_prefix, self.cfg.config.gateway.id), payload, retain=True)

    async def _switch(self) -> bytes:
        """Switch to the waiting next key at the next batch number (the caller holds the lock)."""
        assert self.device is not None
        doc = await self.device.switch(self.position.stream, self.position.next_bseq)
        self.key = self.device.signer
        for up in self.uplinks:
            if up.connected:
                self.announce(up)
        return doc

    async def rotate(self) -> dict[str, Any]:
        """Make a next key (unless one waits) and switch to it now (the ``rotate_key`` command)."""
        assert self.device is not None
        alg = alg_of(self.device.signer)
        prepared = await asyncio.to_thread(prepare_next, self.device.files, alg)
        async with self._lock:
            at = self.position.next_bseq
            if self.device.files.next_public.exists():
                await self._switch()
            key = self.device.signer
            return {"kid": key.kid.hex(), "fingerprint": fingerprint(key.public_key()), "from_batch": at,
                    "stream": self.position.stream, "made": prepared.new}

    def close(self) -> None:
        """Close the key (a token's session; nothing for a PEM key)."""
        if self.device is not None:
            self.device.close()
        elif self.key is not None:
            self.key.close()
