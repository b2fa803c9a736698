"""The rig scenarios' options and fixtures: ``--rig sim`` (CI) or ``--rig PATH`` (a bench).

Without ``--rig`` every scenario is skipped with the reason. ``make test`` runs
``pytest tests/rig --rig sim --junitxml=out/rig/junit.xml``; the markdown summary goes next to
the JUnit XML (``--rig-report``, default ``out/rig``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil.report import RigReport, ScenarioResult
from hil.rig import RigSpec, load_rig


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("sensegate rig")
    g.addoption("--rig", default=None, help="run the rig scenarios on this rig: 'sim' or a rig YAML file")
    g.addoption("--rig-report", default="out/rig", help="directory for the rig summary (summary.md)")
    g.addoption("--soak-seconds", type=float, default=60.0, help="how long the soak scenario runs")
    g.addoption("--rig-kills", type=int, default=50, help="kill -9 cycles in the kill loop scenario")
    g.addoption("--rig-stops", type=int, default=20, help="SIGTERM cycles in the stop loop scenario")


_REPORT: list[RigReport] = []


@pytest.fixture(scope="session")
def rig_spec(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RigSpec]:
    """The rig named by --rig; without it the scenario is skipped (it needs devices)."""
    name = pytestconfig.getoption("--rig", default=None)
    if not name:
        pytest.skip("no rig given: run with --rig sim (simulated devices) or --rig hil/rigs/bench-pi.yaml")
    # one byte-code cache for every daemon of the run (they run as the packaged unit does)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SENSEGATE_RIG_PYCACHE", str(tmp_path_factory.mktemp("pycache")))
        yield load_rig(name)


@pytest.fixture(scope="session")
def rig_report(pytestconfig: pytest.Config, rig_spec: RigSpec) -> Iterator[RigReport]:
    report = RigReport(rig_spec.name, Path(pytestconfig.getoption("--rig-report", default="out/rig")))
    _REPORT.append(report)
    yield report
    report.write()


@pytest.fixture
def result(request: pytest.FixtureRequest, rig_report: RigReport) -> Iterator[ScenarioResult]:
    """This scenario's row in the report; the outcome is filled in after the test."""
    doc = (request.function.__doc__ or request.node.name).strip().splitlines()[0]
    res = rig_report.scenario(request.node.nodeid, doc.rstrip("."))
    t0 = time.monotonic()
    yield res
    res.wall_s = time.monotonic() - t0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    for report in _REPORT:
        res = report.scenarios.get(item.nodeid)
        if res is None:
            continue
        if rep.failed:
            res.outcome = "FAILED" if rep.when == "call" else f"ERROR ({rep.when})"
        elif rep.when == "call" and rep.passed and res.outcome == "?":
            res.outcome = "passed"
        elif rep.skipped:
            res.outcome = "skipped"


def pytest_sessionfinish(session: pytest.Session) -> None:
    for report in _REPORT:  # again, now with the last outcomes
        report.write()
