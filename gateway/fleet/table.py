"""The fleet view as text: cells shared by the terminal table and the web page."""

from __future__ import annotations

import time

from gateway.fleet.view import Row


def ago(ts: float | None, now: float | None = None) -> str:
    """'12s ago', '3m ago', '5h ago', '2d ago'; '-' for none."""
    if not ts:
        return "-"
    return age(max(0.0, (now or time.time()) - ts)) + " ago"


def age(seconds: float | None) -> str:
    """'12s', '3m', '5h', '2d'; '-' for none."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"


def cells(r: Row, now: float | None = None) -> dict[str, str]:
    """One row as display text, by column."""
    if r.state == "online":
        state = "online"
    elif r.state == "stale":
        state = f"stale ({ago(r.last_seen, now)})"
    elif r.last_seen:
        state = f"offline, seen {ago(r.last_seen, now)}"
    else:
        state = r.state
    # "local file": what earlier agents said; "local": the running-config block of gateway/metrics.py
    config = "local file" if r.source in ("local", "local file") else f"r{r.revision} pushed" if r.revision else "-"
    push = r.last_push or {}
    if push.get("state") in ("rolled_back", "rejected") and push.get("revision") not in (None, r.revision):
        config += f" ({push['state']} r{push.get('revision')})"
    drivers = f"{r.drivers_up}/{r.drivers_total} up" if r.drivers_total or r.absent else "-"
    if r.absent:
        drivers += f", {len(r.absent)} absent"
    buffered = "-" if r.buffered is None else f"{r.buffered}" + (f" ({age(r.oldest_age_s)})" if r.buffered else "")
    ack = f"#{r.last_ack} {ago(r.last_ack_at, now)}" if r.last_ack else "-"
    if r.clock_synced is None:
        clock = "-"
    else:
        off = f"{r.clock_offset_s * 1000:+.1f}ms" if r.clock_offset_s is not None else "?"
        clock = off if r.clock_synced else f"UNSYNCED {off}"
    signed = "-" if r.verified is None else "yes" if r.verified is True else "NO"
    agent = r.version or "-"
    upd = (r.agent or {}).get("update")
    upd = upd if isinstance(upd, dict) else {}
    if upd.get("state") in ("trial", "rolled_back", "refused"):
        agent += f" ({upd['state']} {upd.get('version', '')})".rstrip()
    return {"gateway": r.gateway, "groups": ", ".join(r.groups) or "-", "state": state, "version": agent,
            "config": config, "drivers": drivers,
            "buffer": buffered, "last_ack": ack, "clock": clock, "disk": size(r.disk_free), "signed": signed,
            "verdict": r.verdict or "-"}


COLUMNS = [("gateway", "GATEWAY"), ("groups", "GROUPS"), ("state", "STATE"), ("version", "AGENT"), ("config", "CONFIG"),
           ("drivers", "DRIVERS"), ("buffer", "BUFFERED"), ("last_ack", "LAST ACK"), ("clock", "CLOCK"),
           ("disk", "DISK FREE"), ("signed", "SIGNED"), ("verdict", "VERDICT")]


def format_table(rows: list[Row], signed: bool, verdicts: bool = False) -> str:
    """The terminal table: a line per gateway, then its down drivers with their reasons."""
    cols = [(k, t) for k, t in COLUMNS if (k != "signed" or signed) and (k != "verdict" or verdicts)
            and k != "groups"]
    now = time.time()
    table = [cells(r, now) for r in rows]
    widths = {k: max([len(t)] + [len(c[k]) for c in table]) for k, t in cols}
    lines = ["  ".join(t.ljust(widths[k]) for k, t in cols).rstrip()]
    for r, c in zip(rows, table, strict=True):
        lines.append("  ".join(c[k].ljust(widths[k]) for k, _ in cols).rstrip())
        for name, why in r.down.items():
            lines.append(f"    {name}: {why}")
        if r.verified not in (None, True):
            lines.append(f"    not verified: {r.verified}")
    online = sum(1 for r in rows if r.state == "online")
    healthy = sum(1 for r in rows if r.healthy)
    lines.append("")
    lines.append(f"{len(rows)} gateway(s): {online} online, {healthy} healthy, "
                 f"{sum(1 for r in rows if r.state == 'offline')} offline, {sum(1 for r in rows if r.down)} "
                 "with drivers down")
    return "\n".join(lines)
