"""A throw-away PostgreSQL from ``initdb`` on a free loopback port, for tests and the benchmark.

``Postgres()`` makes a cluster in a fresh temporary directory and serves it on 127.0.0.1 only
(no Unix socket), trust authentication for the superuser ``sensegate`` and a database of the
same name; ``stop``/``start``/``restart``/``kill`` act on it as an outage would, and ``destroy``
removes it. PostgreSQL refuses to run as root: under root (CI) the server runs as the
unprivileged user ``nobody`` (or ``$SENSEGATE_PG_USER``), which owns the data directory. The
directory is made with ``mkdtemp`` under the system temporary directory, because a test's own
``tmp_path`` is private to root and the server could not enter it.

``Blackhole`` is a TCP relay in front of the server that can go silent: bytes stop flowing both
ways without a reset, and new connections are accepted but never answered, as when a database
host drops off the network. A worker pointed at ``blackhole.dsn`` "cannot reach the database"
while others reach it directly.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gateway.testing.procs import free_port, wait_port
from hil.servers import end, stable_port

SUPERUSER = "sensegate"
DATABASE = "sensegate"


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL server program, or a clear error naming the Debian package."""
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]), reverse=True)
    if versions:  # Debian keeps the server programs off PATH, one directory per major version
        return str(versions[0])
    found = shutil.which(name)
    if found:
        return found
    raise RuntimeError(f"PostgreSQL's {name} is not installed: sudo apt-get install postgresql")


class Postgres:
    """Start/stop/restart/kill a private PostgreSQL; ``dsn`` connects as the superuser."""

    def __init__(self, log_dir: Path | None = None, port: int = 0, fsync: bool = True,
                 settings: dict[str, str] | None = None) -> None:
        self.port = port or stable_port()
        self.fsync = fsync
        self.settings = settings or {}
        self.root = Path(tempfile.mkdtemp(prefix="sensegate-pg-"))
        self.data = self.root / "data"
        self.log = (log_dir or self.root) / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._started = False
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:  # PostgreSQL will not run as root
            user = pwd.getpwnam(os.environ.get("SENSEGATE_PG_USER", "nobody"))
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._initdb()

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, argv: list[str], timeout: float = 60) -> None:
        r = subprocess.run(argv, capture_output=True, timeout=timeout, env={**os.environ, "LC_ALL": "C"},
                           cwd=self.root, **self._as)
        if r.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.decode(errors='replace')[-2000:]}")

    def _initdb(self) -> None:
        self._run([pg_bin("initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                   "--no-locale", "--no-sync"])

    def start(self, within: float = 30.0) -> None:
        """Start the server and wait until it accepts queries; the database is made on first start.
        A port taken by someone else before the first start: another port (later starts keep theirs)."""
        for attempt in range(3):
            try:
                self._start(within)
                self._started = True
                return
            except RuntimeError as e:
                if self._started or "already in use" not in str(e) or attempt == 2:
                    raise
                self.port = stable_port()

    def _start(self, within: float) -> None:
        opts = {"listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": "",
                "fsync": "on" if self.fsync else "off", "max_connections": "100",
                "log_min_messages": "warning", **self.settings}
        argv = [pg_bin("postgres"), "-D", str(self.data)]
        for k, v in opts.items():
            argv += ["-c", f"{k}={v}"]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True, cwd=self.root,
                                         **self._as)
        try:
            wait_port(self.port, timeout=within)
            deadline = time.monotonic() + within
            while subprocess.run([pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                                 timeout=10).returncode:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise TimeoutError
                time.sleep(0.05)
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"postgres did not start; see {self.log}:\n{self.log.read_text()[-2000:]}") from None
        self._ensure_database()

    def _ensure_database(self) -> None:
        psql = [pg_bin("psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, "-d", "postgres",
                "-tAc"]
        have = subprocess.run([*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
                              capture_output=True, timeout=30)
        if have.stdout.strip() != b"1":
            self._run([*psql, f"CREATE DATABASE {DATABASE}"])

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self) -> None:
        """Fast shutdown (SIGINT: open transactions are rolled back, the server checkpoints)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            end(proc, signal.SIGINT, within=30)

    def kill(self) -> None:
        """kill -9 of the postmaster and every backend: recovery replays the WAL at the next start."""
        proc, self.proc = self.proc, None
        if proc is not None:
            end(proc, None)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def destroy(self) -> None:
        """Stop and remove the cluster's files."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Postgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


class Blackhole:
    """A loopback TCP relay to ``target`` that can go silent (``cut``) and come back (``heal``)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.silent = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._thread = threading.Thread(target=self._loop, name="pg-blackhole", daemon=True)

    def dsn_for(self, dsn: str, real_port: int) -> str:
        """``dsn`` with the server's port replaced by the relay's."""
        return dsn.replace(f":{real_port}/", f":{self.port}/")

    def start(self) -> Blackhole:
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._thread.start()
        return self

    def cut(self) -> None:
        """From now on nothing passes either way, and nothing is refused."""
        self.silent.set()

    def heal(self) -> None:
        """Traffic flows again; connections made or stalled while silent carry on."""
        self.silent.clear()

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            client, _ = self._listener.accept()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                return
            for s in (client, upstream):
                s.setblocking(False)
            self._pairs[client], self._pairs[upstream] = upstream, client
            self._sel.register(client, selectors.EVENT_READ)
            self._sel.register(upstream, selectors.EVENT_READ)

    def _drop(self, s: socket.socket) -> None:
        peer = self._pairs.pop(s, None)
        for x in (s, peer):
            if x is None:
                continue
            self._pairs.pop(x, None)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(x)
            x.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.silent.is_set():  # hold every byte where it is: the kernel buffers fill, nothing is refused
                time.sleep(0.05)
                continue
            for key, _ in self._sel.select(timeout=0.05):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                if s is self._listener:
                    self._accept()
                    continue
                peer = self._pairs.get(s)
                if peer is None:
                    continue
                try:
                    data = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(s)
                    continue
                try:
                    peer.setblocking(True)
                    peer.sendall(data)
                    peer.setblocking(False)
                except OSError:
                    self._drop(s)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for s in list(self._pairs):
            self._drop(s)
        self._sel.close()
        self._listener.close()

    def __enter__(self) -> Blackhole:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
