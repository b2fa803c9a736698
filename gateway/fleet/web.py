"""The fleet page: the `fleet status` table in a browser, with filters, served without any framework.

Server-rendered HTML with a few lines of vanilla JavaScript for the filters (group, state, free
text); no external file, so it works offline. Served by the ingest's HTTP endpoint at ``/fleet``
(then each row also shows the completeness verdict from the ingest's ledger) or by `sensegate
fleet web` where no ingest runs. ``/fleet.json`` is the same data for scripts.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from gateway.fleet.table import COLUMNS, cells
from gateway.fleet.view import FleetWatch, Row, subscriptions
from gateway.metrics import MetricsServer

log = logging.getLogger("sensegate.fleet")
Verdicts = Callable[[], Awaitable[dict[str, str]]]
STATE_FILTERS = ("online", "offline", "stale", "degraded", "healthy")
VERDICT_WAIT = 5.0  # a database slower than this: the page shows the fleet without verdicts
VERDICT_TTL = 10.0  # seconds the ledger's verdicts are kept before the database is asked again

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.2em;color:#222}
h1{font-size:1.3em;margin:0 0 .6em}
form{display:flex;gap:.8em;align-items:center;margin-bottom:.8em;flex-wrap:wrap}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.3em .6em;border-bottom:1px solid #ddd;vertical-align:top;white-space:nowrap}
th{background:#f3f3f3;position:sticky;top:0}
tr.bad td{background:#fff3f0} tr.offline td{color:#888}
td.why{white-space:normal;color:#a33;font-size:.9em}
.state-online{color:#176b25;font-weight:600}.state-offline,.state-stale{color:#a33;font-weight:600}
#count{color:#555}
"""

SCRIPT = """
(function(){
  var f=document.getElementById('filters'), rows=[].slice.call(document.querySelectorAll('tbody tr'));
  function apply(){
    var g=f.group.value, s=f.state.value, q=f.q.value.trim().toLowerCase(), n=0;
    rows.forEach(function(r){
      var ok=(!g||(' '+r.dataset.groups+' ').indexOf(' '+g+' ')>=0)
        &&(!s||(' '+r.dataset.states+' ').indexOf(' '+s+' ')>=0)&&(!q||r.dataset.text.indexOf(q)>=0);
      r.hidden=!ok; if(ok)n++;
    });
    document.getElementById('count').textContent=n+' of '+rows.length+' gateways shown';
    var p=new URLSearchParams(); if(g)p.set('group',g); if(s)p.set('state',s); if(q)p.set('q',q);
    history.replaceState(null,'',location.pathname+(p.toString()?'?'+p:''));
  }
  f.addEventListener('input',apply); f.addEventListener('change',apply);
  f.addEventListener('submit',function(e){e.preventDefault();});
  apply();
  setTimeout(function(){location.reload();},30000);
})();
"""


def _states(r: Row) -> str:
    """What the state filter matches: the state, plus healthy / degraded."""
    extra = ["healthy"] if r.healthy else []
    if r.state == "online" and r.down:
        extra.append("degraded")
    return " ".join([r.state, *extra])


def render(rows: list[Row], query: dict[str, str], title: str = "sensegate fleet", verdicts: bool = False) -> str:
    """The whole page, with the filters preset from the query (group, state, q)."""
    esc = html.escape
    cols = [(k, t) for k, t in COLUMNS if k != "verdict" or verdicts]
    groups = sorted({g for r in rows for g in r.groups})
    now = time.time()
    body = []
    for r in rows:
        c = cells(r, now)
        why = "; ".join(f"{n}: {w}" for n, w in r.down.items())
        if r.verified not in (None, True):
            why = f"not verified: {r.verified}" + (f"; {why}" if why else "")
        text = " ".join([*c.values(), why, *r.groups]).lower()
        klass = "offline" if r.state in ("offline", "unknown") else "" if r.healthy else "bad"
        tds = "".join(f'<td class="col-{k}{" state-" + r.state if k == "state" else ""}">{esc(c[k])}</td>'
                      for k, _ in cols)
        body.append(f'<tr class="{klass}" data-gateway="{esc(r.gateway)}" data-groups="{esc(" ".join(r.groups))}" '
                    f'data-states="{esc(_states(r))}" data-text="{esc(text)}">{tds}'
                    f'<td class="why">{esc(why)}</td></tr>')
    head = "".join(f"<th>{esc(t)}</th>" for _, t in cols) + "<th>PROBLEMS</th>"

    def options(values: list[str], chosen: str, blank: str) -> str:
        opts = [f'<option value="">{esc(blank)}</option>']
        opts += [f'<option value="{esc(v)}"{" selected" if v == chosen else ""}>{esc(v)}</option>' for v in values]
        return "".join(opts)

    online = sum(1 for r in rows if r.state == "online")
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>{esc(title)}</h1>"
        f"<p>{len(rows)} gateways, {online} online, {sum(1 for r in rows if r.healthy)} healthy "
        f"&middot; as of {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))} (reloads every 30 s)</p>"
        '<form id=filters>'
        f'<label>group <select name=group id=group>{options(groups, query.get("group", ""), "all")}</select></label>'
        f'<label>state <select name=state id=state>{options(list(STATE_FILTERS), query.get("state", ""), "any")}'
        '</select></label>'
        f'<label>search <input name=q id=q type=search value="{esc(query.get("q", ""))}" '
        'placeholder="gateway, driver, reason"></label><span id=count></span></form>'
        f"<table id=fleet><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        f"<script>{SCRIPT}</script></body></html>"
    )


class FleetPage:
    """Keeps the fleet view current (one MQTT subscription) and renders it, with ledger verdicts."""

    def __init__(self, broker: Any, trust: Any = None, verdicts: Verdicts | None = None,
                 default_group: str | None = None) -> None:
        self.broker = broker
        self.trust = trust
        self.verdicts = verdicts
        self.default_group = default_group
        self.watch = FleetWatch(broker.prefix)
        self._task: asyncio.Task[None] | None = None
        self._cached: tuple[float, dict[str, str]] = (0.0, {})

    async def start(self) -> None:
        from gateway.mqtt import subscribe_forever

        self._task = asyncio.create_task(subscribe_forever(self.broker.settings, subscriptions(self.broker.prefix),
                                                           self.watch.on_message, qos=0), name="fleet-watch")

    async def close(self) -> None:
        from gateway.bounded import stop_task

        if self._task is not None:
            await stop_task(self._task, (2.0,))
            self._task = None

    async def rows(self) -> list[Row]:
        rows = self.watch.rows(self.trust)
        if self.verdicts is not None:
            at, known = self._cached
            if time.monotonic() - at > VERDICT_TTL:
                try:
                    async with asyncio.timeout(VERDICT_WAIT):
                        known = await self.verdicts()
                except Exception as e:  # a database that does not answer: the page still shows the fleet
                    log.warning("fleet page: no ledger verdicts: %s", e)
                    known = {gw: "ledger unavailable" for gw in known} or {}
                self._cached = (time.monotonic(), known)
            for r in rows:
                r.verdict = known.get(r.gateway, "nothing received")
        return rows

    async def route(self, path: str, query: str) -> tuple[str, str, str] | None:
        """(status, body, content type) for the fleet's paths; None for others."""
        q = {k: v[-1] for k, v in parse_qs(query).items()}
        if path in ("/fleet", "/fleet/"):
            if "group" not in q and self.default_group:
                q["group"] = self.default_group
            page = render(await self.rows(), q, verdicts=self.verdicts is not None)
            return "200 OK", page, "text/html; charset=utf-8"
        if path == "/fleet.json":
            rows = await self.rows()
            return "200 OK", json.dumps({"gateways": [r.as_json() for r in rows]}), "application/json"
        return None


class FleetWebServer(MetricsServer):
    """`sensegate fleet web`: the fleet page at / and /fleet, its data at /fleet.json."""

    def __init__(self, page: FleetPage) -> None:
        super().__init__(None)
        self.fleet = page

    def page(self) -> str:
        rows = self.fleet.watch.rows(self.fleet.trust)
        lines = ["# HELP sensegate_fleet_gateways Gateways seen, by state.", "# TYPE sensegate_fleet_gateways gauge"]
        for state in ("online", "offline", "stale", "unknown"):
            lines.append(f'sensegate_fleet_gateways{{state="{state}"}} {sum(1 for r in rows if r.state == state)}')
        return "\n".join(lines) + "\n"

    async def route(self, path: str, query: str) -> tuple[str, str, str] | None:
        return await self.fleet.route("/fleet" if path == "/" else path, query)


async def serve(broker: Any, trust: Any, listen: str, group: str | None, stop: asyncio.Event | None = None) -> int:
    """Run `sensegate fleet web` until interrupted."""
    import signal

    page = FleetPage(broker, trust, default_group=group)
    server = FleetWebServer(page)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await page.start()
        await server.apply(True, listen)
        if not server.listen:
            return 2
        print(f"fleet page on http://{listen}/ (Ctrl-C stops)", flush=True)
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.close()
        await page.close()
    return 0
