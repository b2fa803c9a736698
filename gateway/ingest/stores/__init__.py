"""Storage back-ends of the fleet ingest (the contract is gateway.ingest.contract.Storage).

``open_storage("sqlite:PATH")`` is the embedded default, one process with its broker;
``open_storage("postgresql://...")`` is the fleet's, shared by any number of workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # `sensegate --help` imports this module: keep it light
    from gateway.ingest.contract import Storage

DEFAULT_DB = "sqlite:/var/lib/sensegate/ingest.db"


class NeedsExtra(RuntimeError):
    """A back-end's library is not installed; the message names the pip extra."""


def open_storage(url: str, timeout: float = 20.0) -> Storage:
    """The back-end for ``url``: ``sqlite:PATH`` or ``postgresql://...`` (``postgres://`` too)."""
    if url.startswith("sqlite:"):
        from gateway.ingest.stores.sqlite import SqliteStorage

        path = url.removeprefix("sqlite:").removeprefix("//")
        if not path:
            raise ValueError("sqlite: needs a file, e.g. sqlite:/var/lib/sensegate/ingest.db")
        return SqliteStorage(Path(path))
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from gateway.ingest.stores.postgres import PostgresStorage
        except ImportError as e:
            raise NeedsExtra(str(e)) from None
        return PostgresStorage(url, timeout=timeout)
    raise ValueError(f"--db {url!r}: use sqlite:PATH or postgresql://USER@HOST:PORT/DATABASE")
