"""Fixtures of the fleet ingest's tests: PostgreSQL from initdb (one server for the session, a fresh
database per test), and a database URL for each back-end."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from hil.nats import NatsCluster
from hil.postgres import Postgres


@pytest.fixture(scope="session", autouse=True)
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """One PostgreSQL for the session (fsync off: process kills keep the page cache anyway), started
    before any test so the suite's leak guard counts it as already there."""
    pg = Postgres(log_dir=tmp_path_factory.mktemp("postgres"), fsync=False)
    pg.start()
    yield pg
    pg.destroy()


@pytest.fixture
def pg_dsn(pg_server: Postgres) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    import psycopg

    name = f"t_{secrets.token_hex(6)}"
    admin = pg_server.dsn.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    yield pg_server.dsn.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Each back-end in turn: the embedded SQLite file and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'ingest.db'}"
    dsn: str = request.getfixturevalue("pg_dsn")
    return dsn


@pytest.fixture
def pg_own(tmp_path: Any) -> Iterator[Postgres]:
    """A PostgreSQL of the test's own, for tests that restart or kill the server."""
    pg = Postgres(log_dir=tmp_path, fsync=False)
    pg.start()
    yield pg
    pg.destroy()


@pytest.fixture
def cluster(tmp_path: Any) -> Iterator[NatsCluster]:
    """A 3-node NATS cluster (JetStream, MQTT on each node) of the test's own."""
    c = NatsCluster(tmp_path / "nats", size=3)
    c.start()
    yield c
    c.stop()
