"""Every top-level section of the config takes effect when pushed (and on SIGHUP), or the push
is refused with a reason (issue 16, defect 5): a table over the schema's sections, run against
the real daemon and a real mosquitto. A section added to the schema without a row here and an
entry in gateway.config.apply.APPLY fails the first test."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiocoap
import pytest
import yaml

from gateway.config.apply import APPLY
from gateway.config.schema import Config
from gateway.daemon import Daemon
from gateway.remote import topics
from gateway.remote.ops import Broker, push_config
from gateway.testing import free_port
from hil.mosquitto import Mosquitto
from tests.gateway.test_remote_mqtt import SIM, bootstrap, connected, daemon, ops_key, until


@dataclass
class Case:
    """One section: how to change it, what a push of that change ends in, how to see it took effect."""

    change: Callable[[dict[str, Any], dict[str, Any]], None]  # (document, context)
    pushed: str  # "applied", or the words of the refusal
    check: Callable[[Daemon, dict[str, Any]], Any]  # sync or async; raises if it did not take effect
    reason: str = ""  # what an applied push's status names


async def _http_status(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    await writer.drain()
    line = (await reader.readline()).decode()
    writer.close()
    await writer.wait_closed()
    return line


async def _coap_status(port: int) -> dict[str, Any]:
    ctx = await aiocoap.Context.create_client_context()
    try:
        resp = await ctx.request(aiocoap.Message(code=aiocoap.GET,
                                                 uri=f"coap://127.0.0.1:{port}/sensegate/config/status")).response
        return dict(json.loads(resp.payload))
    finally:
        await ctx.shutdown()


def _set(section: str, **values: Any) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def change(doc: dict[str, Any], ctx: dict[str, Any]) -> None:
        doc.setdefault(section, {}).update({k: v(ctx) if callable(v) else v for k, v in values.items()})
    return change


def _check_gateway(d: Daemon, ctx: dict[str, Any]) -> None:
    assert d.cfg is not None and d.cfg.config.gateway.site == "pole 17"
    assert logging.getLogger("sensegate").level == logging.DEBUG


async def _check_metrics(d: Daemon, ctx: dict[str, Any]) -> None:
    assert (await _http_status(ctx["metrics_port"])).startswith("HTTP/1.0 200")


async def _check_remote(d: Daemon, ctx: dict[str, Any]) -> None:
    assert d.remote is not None and d.remote.settings.groups == ["district-9"]
    up = d.pipeline.uplinks[0]  # type: ignore[union-attr]
    assert topics.group_config_set(up.cfg.topic_prefix, "district-9") in up.subscriptions
    assert isinstance(await _coap_status(ctx["coap_port"]), dict), "the CoAP listener moved to the new port"


def _check_health(d: Daemon, ctx: dict[str, Any]) -> None:
    assert d.cfg is not None and d.cfg.config.health.expect_absent == ["counter"]


def _uplinks(doc: dict[str, Any], ctx: dict[str, Any]) -> None:
    doc["uplinks"][0]["keepalive"] = "7s"


def _mode(doc: dict[str, Any], ctx: dict[str, Any]) -> None:
    doc["uplink_mode"] = "all"


def _drivers(doc: dict[str, Any], ctx: dict[str, Any]) -> None:
    doc["drivers"] = [{**SIM, "interval": "30ms"}]


CASES: dict[str, Case] = {
    "config_version": Case(lambda doc, ctx: doc.update(config_version=99), "newer than this sensegate understands",
                           lambda d, ctx: None),
    "gateway": Case(_set("gateway", site="pole 17", log_level="debug"), "applied", _check_gateway,
                    "pipeline (gateway changed)"),
    "buffer": Case(_set("buffer", commit_interval="50ms"), "applied",
                   lambda d, ctx: _eq(d.pipeline.store.intake.cfg.commit_interval, 0.05), "buffer"),  # type: ignore[union-attr]
    "batch": Case(_set("batch", max_readings=77), "applied",
                  lambda d, ctx: _eq(d.pipeline.cfg.config.batch.max_readings, 77), "batch"),  # type: ignore[union-attr]
    "uplinks": Case(_uplinks, "applied", lambda d, ctx: _eq(d.pipeline.uplinks[0].cfg.keepalive, 7.0),  # type: ignore[union-attr]
                    "uplinks"),
    "uplink_mode": Case(_mode, "applied", lambda d, ctx: _eq(d.pipeline.mode, "all"), "uplink_mode"),  # type: ignore[union-attr]
    "metrics": Case(_set("metrics", enabled=True, listen=lambda ctx: f"127.0.0.1:{ctx['metrics_port']}"),
                    "applied", _check_metrics, "metrics"),
    "remote": Case(_set("remote", groups=["district-9"], coap_listen=lambda ctx: f"127.0.0.1:{ctx['coap_port']}"),
                   "can only be changed in the local file", _check_remote),
    "health": Case(_set("health", expect_absent=["counter"]), "applied", _check_health,
                   "health (expected-absent instances)"),
    "drivers": Case(_drivers, "applied", lambda d, ctx: _eq(d.supervisor.runners["counter"].inst.config.interval,  # type: ignore[union-attr]
                                                            0.03), "drivers counter"),
}


def _eq(got: Any, want: Any) -> None:
    assert got == want, f"{got!r} != {want!r}"


def test_every_section_has_an_apply_path_and_a_case() -> None:
    sections = set(Config.model_fields)
    assert set(APPLY) == sections, f"sections with no apply path: {sections - set(APPLY)}"
    assert set(CASES) == sections, f"sections with no case in this table: {sections - set(CASES)}"


async def _ok(check: Callable[[Daemon, dict[str, Any]], Any], d: Daemon, ctx: dict[str, Any]) -> None:
    res = check(d, ctx)
    if asyncio.iscoroutine(res):
        await res


@pytest.mark.parametrize("section", list(CASES))
async def test_a_pushed_section_takes_effect_or_is_refused(section: str, tmp_path: Path, broker: Mosquitto) -> None:
    case = CASES[section]
    key, pub = ops_key(tmp_path)
    path = bootstrap(tmp_path, "gw-s", broker.url, pub)
    local = yaml.safe_load(path.read_text())
    ctx = {"metrics_port": free_port(), "coap_port": free_port(socket.SOCK_DGRAM)}
    b = Broker.from_url(broker.url)
    async with daemon(path) as d:
        await connected(d)
        doc = {k: v for k, v in copy.deepcopy(local).items() if k != "remote"}
        case.change(doc, ctx)
        _, answers = await push_config(b, key, yaml.safe_dump(doc).encode(), to="gw-s", within=30)
        assert not answers.timed_out
        st = answers.by_gateway["gw-s"]
        if case.pushed == "applied":
            assert st["state"] == "applied", st
            assert case.reason in st["reason"], st
            await _ok(case.check, d, ctx)
        else:
            assert st["state"] == "rejected" and case.pushed in st["reason"], st


@pytest.mark.parametrize("section", list(CASES))
async def test_a_section_changed_by_sighup_takes_effect(section: str, tmp_path: Path, broker: Mosquitto) -> None:
    case = CASES[section]
    _, pub = ops_key(tmp_path)
    path = bootstrap(tmp_path, "gw-h", broker.url, pub)
    ctx = {"metrics_port": free_port(), "coap_port": free_port(socket.SOCK_DGRAM)}
    async with daemon(path) as d:
        await connected(d)
        doc = yaml.safe_load(path.read_text())
        case.change(doc, ctx)
        path.write_text(yaml.safe_dump(doc))
        if section == "config_version":
            assert await d.reload() is False, "a file this sensegate cannot read is refused"
            return
        assert await d.reload() is True
        await connected(d)
        await _ok(case.check, d, ctx)
    logging.getLogger("sensegate").setLevel(logging.INFO)


async def test_a_group_push_reaches_a_group_added_by_sighup(tmp_path: Path, broker: Mosquitto) -> None:
    key, pub = ops_key(tmp_path)
    path = bootstrap(tmp_path, "gw-g", broker.url, pub, remote_groups=[])
    b = Broker.from_url(broker.url)
    async with daemon(path) as d:
        await connected(d)
        doc = yaml.safe_load(path.read_text())
        doc["remote"]["groups"] = ["district-9"]
        path.write_text(yaml.safe_dump(doc))
        assert await d.reload()
        await connected(d)
        await until(lambda: d.pipeline.uplinks[0].connected)  # type: ignore[union-attr]
        new = {"uplinks": doc["uplinks"], "drivers": [SIM, {**SIM, "name": "g"}]}
        _, answers = await push_config(b, key, yaml.safe_dump(new).encode(), group="district-9", within=30)
        assert answers.by_gateway["gw-g"]["state"] == "applied", answers.by_gateway
        assert set(d.supervisor.runners) == {"counter", "g"}  # type: ignore[union-attr]


async def test_pushed_report_rules_apply_without_restarting_the_instance(tmp_path: Path, broker: Mosquitto) -> None:
    """A driver section's ``report:`` rules (edge processing) are accepted by a push and applied to
    the running instance: the driver keeps its device, the rules take over at once."""
    key, pub = ops_key(tmp_path)
    path = bootstrap(tmp_path, "gw-r", broker.url, pub)
    local = yaml.safe_load(path.read_text())
    b = Broker.from_url(broker.url)
    async with daemon(path) as d:
        await connected(d)
        runner = d.supervisor.runners["counter"]  # type: ignore[union-attr]
        driver = runner._driver
        doc = {k: v for k, v in copy.deepcopy(local).items() if k != "remote"}
        doc["drivers"][0]["report"] = [{"points": ["n"], "window": "1m", "aggregate": ["max", "count"]}]
        _, answers = await push_config(b, key, yaml.safe_dump(doc).encode(), to="gw-r", within=30)
        st = answers.by_gateway["gw-r"]
        assert st["state"] == "applied" and "report rules of counter (no restart)" in st["reason"], st
        assert d.supervisor.runners["counter"] is runner and runner._driver is driver  # type: ignore[union-attr]
        assert runner.edge is not None and runner.edge.rules[0].window == 60.0
        doc["drivers"][0]["report"] = [{"points": ["n"], "window": "1m", "deadband": 1}]
        _, answers = await push_config(b, key, yaml.safe_dump(doc).encode(), to="gw-r", within=30)
        st = answers.by_gateway["gw-r"]
        assert st["state"] == "rejected" and "deadband cannot apply to it" in st["reason"], st
        assert runner.edge.rules[0].deadband is None, "a refused push changes nothing"


def test_docs_say_how_each_section_is_applied() -> None:
    text = (Path(__file__).parents[2] / "docs" / "remote.md").read_text()
    missing = [k for k in APPLY if f"| `{k}` |" not in text]
    assert not missing, f"docs/remote.md's table does not say how these sections apply: {missing}"
