"""The fleet page in a real headless Chromium (WebDriver): the table's rows come from the gateways'
signed health summaries (simulated gateways, each the real daemon, through a real mosquitto), and
the group, state and text filters show exactly the rows they should. Served by `sensegate fleet
web`'s server, and by the ingest (with the completeness verdict of its ledger per gateway).

Set SENSEGATE_FLEET_SCREENSHOT=docs/fleet-page.png to write the documentation's screenshot."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from gateway.fleet.web import FleetPage, FleetWebServer
from gateway.receiver.trust import KeyBindings
from gateway.remote.ops import Broker
from gateway.testing import free_port
from gateway.testing.simgateway import SIM_DRIVER, SimGateway, start_all, stop_all
from hil.mosquitto import Mosquitto
from tests.fleet.helpers import SG, ops_key, sg
from tests.fleet.webdriver import Browser, chromium
from tests.gateway.helpers import until

NORTH = [f"gw-n{i:02d}" for i in range(1, 9)]
SOUTH = [f"gw-s{i:02d}" for i in range(1, 5)]
OFFLINE = ("gw-n07", "gw-s04")
BROKEN = "gw-n03"


async def shown(b: Browser) -> list[str]:
    """The gateways of the rows the page shows now."""
    rows = await b.js("return [...document.querySelectorAll('#fleet tbody tr')].filter(r => !r.hidden)"
                      ".map(r => r.dataset.gateway)")
    return list(rows)


async def choose(b: Browser, select: str, value: str) -> None:
    await b.click(f"#{select} option[value='{value}']")


async def test_the_fleet_page_in_chromium_shows_the_fleet_and_filters_it(tmp_path: Path, broker: Mosquitto) -> None:
    _, _, pub = ops_key(tmp_path)
    fleet = [SimGateway(tmp_path / "gws", gw, broker.url, [str(pub)], ["district-7" if gw in NORTH else "district-9"],
                        broken=gw == BROKEN, drivers=[SIM_DRIVER, {**SIM_DRIVER, "name": "meter-2"}])
             for gw in NORTH + SOUTH]
    trust = KeyBindings.from_specs([f"{g.id}={g.public_key}" for g in fleet])
    page = FleetPage(Broker.from_url(broker.url), trust)
    server = FleetWebServer(page)
    port = free_port()
    try:
        await start_all(fleet)
        await stop_all(g for g in fleet if g.id in OFFLINE)
        await page.start()
        await server.apply(True, f"127.0.0.1:{port}")
        await until(lambda: len(page.watch.rows()) == 12 and sum(r.state == "offline" for r in page.watch.rows()) == 2,
                    30)
        async with chromium(tmp_path / "chromium") as b:
            await b.go(f"http://127.0.0.1:{port}/")
            assert await shown(b) == sorted(NORTH + SOUTH)
            assert await b.js("return document.getElementById('count').textContent") == "12 of 12 gateways shown"
            head = await b.js("return [...document.querySelectorAll('#fleet th')].map(t => t.textContent)")
            assert head[:5] == ["GATEWAY", "GROUPS", "STATE", "AGENT", "CONFIG"]
            assert "SIGNED" in head and "PROBLEMS" in head
            cells = await b.js("return [...document.querySelector(\"tr[data-gateway='gw-n03']\").cells]"
                               ".map(c => c.textContent)")
            assert cells[2] == "online" and cells[5] == "0/2 up" and cells[head.index("SIGNED")] == "yes", cells
            assert "sensegate_sim_hardware_lib" in cells[-1], "the row says why its drivers are down"
            assert (await b.js("return document.querySelector(\"tr[data-gateway='gw-n07']\").cells[2].textContent"))\
                .startswith("offline, seen"), "an offline gateway shows when it was last seen"
            if target := os.environ.get("SENSEGATE_FLEET_SCREENSHOT"):
                await b.screenshot(Path(target))
            png = await b.screenshot(tmp_path / "fleet.png")
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

            await choose(b, "group", "district-9")
            assert await shown(b) == SOUTH
            assert await b.js("return document.getElementById('count').textContent") == "4 of 12 gateways shown"
            await choose(b, "state", "offline")
            assert await shown(b) == ["gw-s04"]
            await choose(b, "group", "")
            assert await shown(b) == ["gw-n07", "gw-s04"]
            await choose(b, "state", "degraded")
            assert await shown(b) == [BROKEN]
            await choose(b, "state", "healthy")
            assert await shown(b) == sorted(set(NORTH + SOUTH) - {BROKEN, *OFFLINE})
            await choose(b, "state", "")
            await b.type("#q", "HARDWARE_lib")
            assert await shown(b) == [BROKEN], "the text filter searches the reasons too"
            assert "q=hardware_lib" in await b.js("return location.search")
            await b.clear("#q")
            await b.type("#q", "gw-s0")
            assert await shown(b) == SOUTH

            # a filtered link opens filtered (the URL keeps the filters)
            await b.go(f"http://127.0.0.1:{port}/fleet?group=district-7&state=offline")
            assert await shown(b) == ["gw-n07"]
            data = await b.js("return fetch('/fleet.json').then(r => r.json())")
            assert len(data["gateways"]) == 12 and all(g["verified"] is True for g in data["gateways"])
    finally:
        await server.close()
        await page.close()
        await stop_all(fleet)


async def until_ingest_listens(port: int) -> None:
    """The ingest is subscribed (its metrics say the broker answers): batches published now reach it."""
    for _ in range(100):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
            body = (await reader.read()).decode()
            writer.close()
            await writer.wait_closed()
            if "sensegate_ingest_source_up 1" in body:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError("the ingest did not come up")


async def test_the_ingest_serves_the_page_with_each_gateways_completeness_verdict(
        tmp_path: Path, broker: Mosquitto) -> None:
    from tests.gateway.test_remote_mqtt import bootstrap, connected, daemon

    _, _, pub = ops_key(tmp_path)
    sim = SimGateway(tmp_path / "gws", "gw-sim", broker.url, [str(pub)], ["district-7"])
    real = bootstrap(tmp_path, "gw-real", broker.url, pub, remote_groups=["district-7"])
    db = f"sqlite:{tmp_path / 'ingest.db'}"
    enrolled = await sg("fleet", "enrol", "--db", db, str(tmp_path / "gw-real/keys/device.pub.pem"),
                        "--gateway", "gw-real")
    assert enrolled.returncode == 0, enrolled.stderr
    port = free_port()
    ingest = await asyncio.create_subprocess_exec(*SG, "ingest", "--db", db, "--broker", broker.url,
                                                  "--metrics", f"127.0.0.1:{port}", "--log-level", "warning")
    try:
        await until_ingest_listens(port)
        await sim.start()
        async with daemon(real) as d:
            await connected(d)
            await until(lambda: d.pipeline.last_acked[0] > 2, 30)  # type: ignore[union-attr]
            async with chromium(tmp_path / "chromium") as b:
                verdicts: dict[str, str] = {}
                for _ in range(60):
                    try:
                        await b.go(f"http://127.0.0.1:{port}/fleet")
                        verdicts = dict(await b.js(
                            "return Object.fromEntries([...document.querySelectorAll('#fleet tbody tr')]"
                            ".map(r => [r.dataset.gateway, r.querySelector('.col-verdict').textContent]))"))
                    except Exception:
                        verdicts = {}
                    if verdicts.get("gw-real") == "complete":
                        break
                    await asyncio.sleep(1)
                assert verdicts == {"gw-real": "complete", "gw-sim": "nothing received"}, verdicts
    finally:
        ingest.terminate()
        await asyncio.wait_for(ingest.wait(), 20)
        await sim.stop()
