"""`sensegate fleet report`: the ledger per gateway and the fleet's totals, for people and scripts.

Verdicts: ``complete`` (every reading number up to the highest accounted for, and up to what
the gateway's heartbeat said had left it more than the grace period ago, was received, declared
dropped with a reason, or declared skipped after an unclean stop; every chain link checked was
sound), ``missing`` (some numbers are none of those: lost on the way, or not yet arrived),
``broken`` (a batch does not chain to its neighbour, or a batch number came twice with
different content: the gateway's history was altered or its key misused), ``nothing received``
(only refused messages name this gateway).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gateway.ingest.ledger import GatewaySummary

VERDICTS = ("complete", "missing", "broken", "nothing received")


def when(ns: int) -> str:
    """A nanosecond timestamp as UTC text ('' for none)."""
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ns else ""


def _reasons(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items()))


def _chain(s: GatewaySummary) -> str:
    if s.chain_breaks or s.conflicts:
        return f"BROKEN ({s.chain_breaks} breaks, {s.conflicts} conflicts)"
    return f"ok ({s.chain_links} links)"


def format_report(summaries: list[GatewaySummary], grace: float = 300.0) -> str:
    """One line per gateway, then the fleet's totals (``grace``: the tail grace, for the notes)."""
    head = f"{'GATEWAY':<24} {'RECEIVED':>10} {'DROPPED':>8} {'SKIPPED':>8} {'MISSING':>8}  {'CHAIN':<22} " \
           f"{'LAST SEEN':<21} VERDICT"
    lines = [head]
    for s in summaries:
        lines.append(f"{s.gateway:<24} {s.readings:>10} {s.dropped:>8} {s.skipped:>8} {s.missing:>8}  "
                     f"{_chain(s):<22} {when(s.last_seen_ns) or '-':<21} {s.verdict()}")
        if s.drop_reasons:
            lines.append(f"{'':<24}   dropped: {_reasons(s.drop_reasons)}")
        if s.missing_ranges:
            shown = ", ".join(f"{a}-{b}" if a != b else f"{a}" for _, a, b in s.missing_ranges[:5])
            more = f" and {len(s.missing_ranges) - 5} more ranges" if len(s.missing_ranges) > 5 else ""
            lines.append(f"{'':<24}   missing: {shown}{more}")
        if s.heartbeat_ns:
            lines.append(f"{'':<24}   heartbeat {when(s.heartbeat_ns)}: issued up to {s.issued}"
                         + (f"; {s.pending} not received yet (on the gateway, or left it less than {grace:g}s "
                            "ago)" if s.pending else ""))
        if s.refused:
            lines.append(f"{'':<24}   refused: {_reasons(s.refused)} (in the quarantine)")
        if s.time_uncertain:
            lines.append(f"{'':<24}   clock: {s.time_uncertain} readings stamped on an unsynchronised clock, "
                         f"{s.time_redated} re-dated, {s.time_uncertain - s.time_redated} still uncertain")
    t = totals(summaries)
    verdicts = ", ".join(f"{t['verdicts'][v]} {v}" for v in VERDICTS if t["verdicts"][v])
    lines.append("")
    lines.append(f"fleet: {t['gateways']} gateways ({verdicts or 'none'}); {t['readings']} readings received, "
                 f"{t['dropped']} dropped, {t['skipped']} skipped, {t['missing']} missing, {t['pending']} pending; "
                 f"refused: {t['refused_total']}" + (f" ({_reasons(t['refused'])})" if t["refused"] else ""))
    return "\n".join(lines)


def gateway_json(s: GatewaySummary) -> dict[str, Any]:
    return {
        "gateway": s.gateway, "verdict": s.verdict(), "streams": s.streams, "received": s.readings,
        "batches": s.batches, "dropped": s.dropped, "dropped_by_reason": s.drop_reasons, "skipped": s.skipped,
        "missing": s.missing,
        "missing_ranges": [{"stream": st, "first": a, "last": b} for st, a, b in s.missing_ranges],
        "duplicates": s.duplicates, "restarts": s.restarts,
        "chain": {"ok": not (s.chain_breaks or s.conflicts), "links": s.chain_links, "breaks": s.chain_breaks,
                  "conflicts": s.conflicts},
        "refused": s.refused, "last_seen": when(s.last_seen_ns), "last_reading": when(s.last_reading_ns),
        "time": {"uncertain": s.time_uncertain, "redated": s.time_redated,
                 "still_uncertain": s.time_uncertain - s.time_redated},
        "pending": s.pending, "heartbeat": {"received": when(s.heartbeat_ns), "issued": s.issued} if s.heartbeat_ns
        else None,
    }


def totals(summaries: list[GatewaySummary]) -> dict[str, Any]:
    refused: dict[str, int] = {}
    for s in summaries:
        for k, v in s.refused.items():
            refused[k] = refused.get(k, 0) + v
    return {
        "gateways": len(summaries),
        "verdicts": {v: sum(1 for s in summaries if s.verdict() == v) for v in VERDICTS},
        "readings": sum(s.readings for s in summaries), "dropped": sum(s.dropped for s in summaries),
        "skipped": sum(s.skipped for s in summaries), "missing": sum(s.missing for s in summaries),
        "time_uncertain": sum(s.time_uncertain for s in summaries),
        "time_redated": sum(s.time_redated for s in summaries),
        "pending": sum(s.pending for s in summaries),
        "chain_breaks": sum(s.chain_breaks + s.conflicts for s in summaries),
        "refused": refused, "refused_total": sum(refused.values()),
    }


def report_json(summaries: list[GatewaySummary]) -> dict[str, Any]:
    return {"gateways": [gateway_json(s) for s in summaries], "fleet": totals(summaries)}
