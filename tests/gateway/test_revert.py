"""The signed `revert` command (a rollout's rollback) on the real daemon through a real mosquitto:
back to an earlier pushed revision kept on disk, back to the local file, and refused when the
gateway does not run the revision named (nothing newer is ever undone) or no longer keeps the
one asked for; a power cut in the middle is covered by the store's pending marker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from gateway.remote.ops import Broker, push_config, send_command
from hil.mosquitto import Mosquitto
from tests.gateway.test_remote_mqtt import SIM, bootstrap, connected, daemon, ops_key


async def test_revert_to_a_kept_revision_and_to_the_local_file(tmp_path: Path, broker: Mosquitto) -> None:
    key, pub = ops_key(tmp_path)
    path = bootstrap(tmp_path, "gw-v", broker.url, pub)
    local = yaml.safe_load(path.read_text())
    b = Broker.from_url(broker.url)

    async def push(rev: int, drivers: list[dict[str, Any]]) -> None:
        doc = {"uplinks": local["uplinks"], "drivers": drivers}
        _, ans = await push_config(b, key, yaml.safe_dump(doc).encode(), to="gw-v", revision=rev, within=30)
        assert ans.by_gateway["gw-v"]["state"] == "applied"

    async def revert(**args: Any) -> dict[str, Any]:
        _, _, ans = await send_command(b, key, "revert", args, to="gw-v", within=30)
        return ans.by_gateway["gw-v"]

    async with daemon(path) as d:
        await connected(d)
        await push(10, [SIM, {**SIM, "name": "ten"}])
        await push(20, [SIM, {**SIM, "name": "twenty"}])
        assert d.remote is not None and d.remote.revision == 20

        res = await revert(**{"from": 10, "to": None})
        assert res["status"] == "refused" and "not revision 10: nothing to revert" in res["reason"], res
        res = await revert(**{"from": 20, "to": 5})
        assert res["status"] == "refused" and "revision 5 is no longer kept" in res["reason"], res

        res = await revert(**{"from": 20, "to": 10})
        assert res["status"] == "done" and res["result"]["running_revision"] == 10, res
        assert d.remote.revision == 10 and set(d.supervisor.runners) == {"counter", "ten"}  # type: ignore[union-attr]

        res = await revert(**{"from": 10, "to": None})
        assert res["status"] == "done", res
        assert d.remote.revision is None and set(d.supervisor.runners) == {"counter"}  # type: ignore[union-attr]

        # anti-rollback is untouched: revision 20 (and below) can still not be pushed again
        doc = {"uplinks": local["uplinks"], "drivers": [SIM]}
        _, ans = await push_config(b, key, yaml.safe_dump(doc).encode(), to="gw-v", revision=20, within=30)
        assert ans.by_gateway["gw-v"]["state"] == "rejected" and "not newer" in ans.by_gateway["gw-v"]["reason"]


def test_a_revert_cut_short_by_a_power_cut_boots_the_revision_it_came_from(tmp_path: Path) -> None:
    from gateway.remote.store import ConfigStore

    store = ConfigStore(tmp_path)
    store.open()
    for rev in (10, 20):
        store.stage(rev, f"r{rev}".encode(), f"d{rev}")
        store.commit(rev)
    store.mark_pending(None)  # the revert to the local file begins; then the power goes
    after = ConfigStore(tmp_path)
    after.open()
    choice = after.boot()
    assert choice.revision == 20 and choice.data == b"r20" and "restarted during the apply" in choice.note
    assert after.state.pending is None and after.path(10).exists(), "earlier good configs stay"
