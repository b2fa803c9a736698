"""The gateway's device key over time: the key that signs now, a prepared next key, the switch
between two batches, and the rotation documents that announce it (docs/security.md).

Files beside the key (``<base>`` is the key file without ``.key``; for a token key,
``<state_dir>/keys/device``):

* ``<base>.next.key`` (PEM keys) and ``<base>.next.pub.pem``: a next key, made by
  ``sensegate keys rotate`` or the ``rotate_key`` command. On a token, the next key pair waits
  under the label ``<label>.next``; the ``.next.pub.pem`` file is the marker either way.
* ``<base>.rotations``: the latest rotation documents (a CBOR array), oldest first.

The switch happens in the pipeline between two batches, at batch number ``bs``: the rotation
document (gateway/keyevents.py: old and new key sign gateway id, both kids, the new key, stream
and ``bs``) is written to ``.rotations`` first (the decision), then the new key takes the key
file's place (PEM: a rename over the old key, which is gone; token: the old pair is destroyed
and the next pair relabelled), and only then does the new key sign. A stop at any point comes
back either before the decision (the next key is still waiting: the switch happens at the next
batch) or after it (the switch is finished at start), never with batches signed by a key the
documents do not announce. Batch numbers only grow, also across an unclean stop, so every batch
the new key signs is numbered ``bs`` or more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2

from gateway.keyevents import MAX_HISTORY, history_message, make_rotation, parse_event
from gateway.keys import (
    KeyFileError,
    Signer,
    alg_of,
    fingerprint,
    generate,
    key_id,
    load_public_key,
    load_signing_key,
    private_pem,
    public_pem,
)
from gateway.pkcs11uri import is_pkcs11

log = logging.getLogger("sensegate.keys")
CARRY_BATCHES = 1024
"""Batches after a switch that carry the rotation document in their header (label ``kr``)."""
CHECK_EVERY = 2.0
"""Seconds between looks for a next key prepared by ``sensegate keys rotate``."""


@dataclass(frozen=True)
class KeyFiles:
    """Where a gateway's device key, its next key and its rotation documents are."""

    spec: str  # the config's key: a PEM path or a pkcs11: URI
    base: Path

    @classmethod
    def of(cls, spec: str, default: Path) -> KeyFiles:
        """``spec``: ``gateway.key_file``; ``default``: the PEM path used when it is empty (or a token's)."""
        path = Path(spec) if spec and not is_pkcs11(spec) else default
        base = path.with_name(path.name.removesuffix(".key")) if path.name.endswith(".key") else path.with_suffix("")
        return cls(spec or str(default), base)

    @property
    def token(self) -> bool:
        return is_pkcs11(self.spec)

    def _file(self, suffix: str) -> Path:
        return self.base.with_name(self.base.name + suffix)

    @property
    def public(self) -> Path:
        return self._file(".pub.pem")

    @property
    def next_private(self) -> Path:
        return self._file(".next.key")

    @property
    def next_public(self) -> Path:
        return self._file(".next.pub.pem")

    @property
    def history(self) -> Path:
        return self._file(".rotations")

    def next_spec(self) -> str:
        """Where the next key is: a PEM file, or a URI on the token."""
        if self.token:
            from gateway.hsm import next_uri

            return next_uri(self.spec)
        return str(self.next_private)


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    from gateway.remote.store import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # a token gateway may have no key files yet
    write_atomic(path, data, mode)


def read_history(files: KeyFiles) -> list[bytes]:
    """The rotation documents kept beside the key, oldest first ([] when none or unreadable)."""
    try:
        docs = cbor2.loads(files.history.read_bytes())
    except FileNotFoundError:
        return []
    except Exception as e:
        log.error("rotation documents %s are unreadable (%s); receivers learn the key from its next rotation "
                  "or from ops", files.history, e)
        return []
    return [d for d in docs if isinstance(d, bytes)] if isinstance(docs, list) else []


@dataclass(frozen=True)
class Prepared:
    """A next key waiting for its switch."""

    kid: bytes
    fingerprint: str
    new: bool  # made now (False: one was already waiting)


def prepare_next(files: KeyFiles, alg: str) -> Prepared:
    """Make the next key (PEM 0600 beside the key, or a key pair on the token) unless one waits.
    Blocks (a token): call it off the event loop."""
    if files.next_public.exists():
        pub = load_public_key(files.next_public)
        return Prepared(key_id(pub), fingerprint(pub), False)
    if files.token:
        from gateway.hsm import create_key

        made = create_key(files.next_spec(), alg=alg, force=True)  # type: ignore[arg-type]
        pub = made.public
    else:
        key = generate(alg)  # type: ignore[arg-type]
        _write(files.next_private, private_pem(key))
        pub = key.public_key()
    _write(files.next_public, public_pem(pub), 0o644)  # last: the marker that a next key waits
    return Prepared(key_id(pub), fingerprint(pub), True)


def _decided(history: list[bytes], kid: bytes) -> bool:
    """Whether the latest rotation document names ``kid`` as the new key."""
    if not history:
        return False
    try:
        _, p = parse_event(history[-1])
    except Exception:
        return False
    return bool(p.get("new") == kid)


def _promote(files: KeyFiles, new_kid: bytes) -> None:
    """Put the next key in the key's place (blocks on a token); idempotent."""
    if files.token:
        from gateway.hsm import promote_next

        promote_next(files.spec, new_kid)
    elif files.next_private.exists():
        os.replace(files.next_private, Path(files.spec))
    if files.next_public.exists():
        os.replace(files.next_public, files.public)
    with contextlib.suppress(OSError):
        fd = os.open(files.base.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def finish_interrupted(files: KeyFiles) -> None:
    """At start: finish a switch that was decided but not done (blocks on a token)."""
    if not files.next_public.exists():
        if not files.token and files.next_private.exists():
            files.next_private.unlink()  # a next key whose making was interrupted: made again when asked
        return
    kid = key_id(load_public_key(files.next_public))
    if _decided(read_history(files), kid):
        log.warning("finishing the switch to key %s that a stop interrupted", kid.hex())
        _promote(files, kid)


def open_current(files: KeyFiles) -> Signer:
    """The key that signs now, after finishing an interrupted switch (blocks on a token)."""
    finish_interrupted(files)
    return load_signing_key(files.spec)


class DeviceKey:
    """The signer of a running pipeline, with what rotation needs (one per pipeline)."""

    def __init__(self, files: KeyFiles, signer: Signer, gateway: str) -> None:
        self.files = files
        self.signer = signer
        self.gateway = gateway
        self.history = read_history(files)
        self._carry: tuple[bytes, int, int] | None = self._carried()
        self._checked = 0.0
        self.rotations = 0
        self.busy = False  # a switch is under way (on its thread): no batch is signed meanwhile

    def _carried(self) -> tuple[bytes, int, int] | None:
        """The latest rotation to the current key, with its stream and first batch."""
        if not self.history:
            return None
        try:
            _, p = parse_event(self.history[-1])
        except Exception:
            return None
        if p.get("new") != self.signer.kid:
            return None
        return self.history[-1], int(p["st"]), int(p["bs"])

    def carry(self, stream: int, bseq: int) -> dict[str, Any] | None:
        """Header labels for batch ``bseq``: the rotation document in the first batches after a switch."""
        c = self._carry
        if c is None or c[1] != stream or not c[2] <= bseq < c[2] + CARRY_BATCHES:
            return None
        return {"kr": c[0]}

    def announcement(self) -> bytes | None:
        """The retained ``<prefix>/<gw>/keys`` message (None before any rotation)."""
        return history_message(self.history) if self.history else None

    def waiting(self) -> bool:
        """Whether a next key waits (looked for at most every CHECK_EVERY seconds)."""
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY:
            return False
        self._checked = now
        return self.files.next_public.exists()

    async def switch(self, stream: int, bseq: int) -> bytes:
        """Switch to the waiting next key from batch ``bseq`` of ``stream``; returns the rotation
        document. Call between two batches (the pipeline holds its signing lock). Like signing a
        batch, it waits for the token as long as the token takes: giving up half way would
        leave batches signed by a key the documents retire. Cancelling the wait is safe."""
        self.busy = True
        return await asyncio.to_thread(self._switch_sync, stream, bseq)

    def _switch_sync(self, stream: int, bseq: int) -> bytes:
        try:
            return self._switch_files(stream, bseq)
        finally:
            self.busy = False  # on the switch's thread: a cancelled wait does not end it early

    def _switch_files(self, stream: int, bseq: int) -> bytes:
        files = self.files
        new = load_signing_key(files.next_spec())
        try:
            if alg_of(new) != alg_of(self.signer):
                raise KeyFileError(f"the next key is {alg_of(new)}, the current one {alg_of(self.signer)}")
            doc = make_rotation(self.signer, new, self.gateway, stream, bseq)
            history = [*self.history, doc][-MAX_HISTORY:]
            _write(files.history, cbor2.dumps(history), 0o644)  # the decision
        except BaseException:
            new.close()
            raise
        new.close()  # a token's next key is opened again under its final label
        _promote(files, key_id(new.public_key()))
        old = self.signer
        old.close()  # first: closing a token session that logged in logs the whole process out
        signer = self.signer = load_signing_key(files.spec)
        self.history = history
        self._carry = (doc, stream, bseq)
        self.rotations += 1
        log.info("device key rotated: %s -> %s (fingerprint %s), from batch %d", old.kid.hex(), signer.kid.hex(),
                 fingerprint(signer.public_key()), bseq)
        return doc

    def close(self) -> None:
        self.signer.close()
