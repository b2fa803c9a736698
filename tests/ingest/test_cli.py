"""The ingest's commands as ops use them, the extra they need named when missing, and the
worker's metrics in the Prometheus text format."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.ingest.contract import StoreReport, VerifiedBatch
from gateway.ingest.metrics import IngestMetrics, IngestMetricsServer
from gateway.senml import DecodedReading
from tests.ingest.fleet import fleet_cli
from tests.ingest.helpers import GatewayFeed


async def test_enrol_keys_revoke_and_report(tmp_path: Path) -> None:
    db = f"sqlite:{tmp_path / 'ingest.db'}"
    a, b = GatewayFeed(tmp_path, "gw-a"), GatewayFeed(tmp_path, "gw-b")
    status, out = await fleet_cli("enrol", "--db", db, str(a.pub), str(b.pub))
    assert status == 0 and "for gateway gw-a" in out and "for gateway gw-b" in out, out
    status, out = await fleet_cli("enrol", "--db", db, "--gateway", "gw-c", str(a.pub))
    assert status == 1 and "already bound to gateway 'gw-a'" in out, out
    status, out = await fleet_cli("keys", "--db", db, "--json")
    keys = json.loads(out)
    assert [(k["gateway"], k["state"]) for k in keys] == [("gw-a", "active"), ("gw-b", "active")]
    status, out = await fleet_cli("revoke", "--db", db, "--gateway", "gw-b", "--kid", keys[1]["kid"],
                                  "--reason", "lost")
    assert status == 0 and "revoked 1 key" in out
    status, out = await fleet_cli("keys", "--db", db, "--gateway", "gw-b")
    assert "revoked" in out and "lost" in out
    status, out = await fleet_cli("report", "--db", db, "--json")
    assert status == 0 and json.loads(out)["fleet"]["gateways"] == 0
    status, out = await fleet_cli("report", "--db", "mysql://nope")
    assert status == 2 and "use sqlite:PATH or postgresql://" in out


def test_a_missing_extra_is_named() -> None:
    for module, argv in [("psycopg", ["fleet", "report", "--db", "postgresql://x@127.0.0.1:1/x"]),
                         ("nats", ["ingest", "--db", "sqlite:/nonexistent/x.db", "--broker", "nats://127.0.0.1:1"])]:
        code = (f"import sys; sys.modules[{module!r}] = None; from gateway.cli import main; "
                f"sys.exit(main({argv!r}))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert "pip install 'sensegate[fleet]'" in r.stderr, r.stderr


async def test_metrics_are_valid_prometheus_text_on_the_endpoint() -> None:
    m = IngestMetrics(worker="w1")
    m.stored(StoreReport(batches=3, readings=30, duplicates=1, refused={"revoked": 2}), 0.25)
    m.lag_messages, m.readings_missing = 7, 4
    readings = [DecodedReading(i, "n", "t", 10**18 + i * 10**9, 1.0, None, 0, 2, "v") for i in range(1, 4)]
    m.committed([VerifiedBatch("gw", b"", 1, 1, 1, bytes(32), bytes(32), 1, 3, (), (), readings, 0, "", b"",
                               10**18 + 10**9, 10**18 + 3 * 10**9)], 10**18 + 4 * 10**9)  # 3, 2 and 1 s old
    server = IngestMetricsServer(m)
    await server.apply(True, "127.0.0.1:0")

    async def get(path: str) -> tuple[str, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        head, _, body = (await reader.read()).partition(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()
        return head.split(b"\r\n", 1)[0].decode(), body.decode()

    try:
        _, body = await get("/metrics")
        # a gateway's /status (what doctor reads) is not an ingest worker's: not served, not offered
        assert (await get("/status"))[0] == "HTTP/1.0 404 Not Found"
        assert "/status" not in (await get("/"))[1]
    finally:
        await server.close()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(body) for s in f.samples}
    assert samples[("sensegate_ingest_readings_stored_total", ())] == 30
    assert samples[("sensegate_ingest_refused_total", (("reason", "revoked"),))] == 2
    assert samples[("sensegate_ingest_lag_messages", ())] == 7
    assert samples[("sensegate_ingest_ledger_readings_missing", ())] == 4
    age = "sensegate_ingest_reading_age_seconds"
    assert samples[(f"{age}_count", ())] == 3 and samples[(f"{age}_sum", ())] == 6.0
    assert samples[(f"{age}_bucket", (("le", "1.024"),))] == 1 and samples[(f"{age}_bucket", (("le", "2.048"),))] == 2
    assert samples[(f"{age}_bucket", (("le", "+Inf"),))] == 3
    assert samples[("sensegate_ingest_batch_age_seconds_count", ())] == 1
