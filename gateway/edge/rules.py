"""The ``report:`` rules of a driver instance: how its points' readings are thinned before the buffer.

Declared here, apart from the code that applies them (``gateway.edge.points``), so the driver
contract (``DriverConfig.report``) can name the schema without importing the hot path. A rule
picks points by shell-style patterns and says one of: report every reading (no strategy: an
exception to the rules below it), report on change (``on_change``, ``deadband``,
``deadband_percent``, with ``max_interval`` as a heartbeat), report at most every T
(``min_interval``), or aggregate windows (``window`` + ``aggregate``). The first matching rule
is a point's rule. docs/edge.md says what each does to the wire.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Literal

from gateway.schema import AfterValidator, Field, JsonSchema, Model, model_validator
from gateway.units import Duration

Aggregate = Literal["min", "max", "mean", "count", "last"]
AGGREGATES: tuple[str, ...] = ("min", "max", "mean", "count", "last")
MIN_WINDOW = 0.1
MAX_WINDOW = 86400.0

# a point or node name with shell-style wildcards (* ? [...]); the names themselves allow
# letters, digits and -:./_ (gateway.scheduler), so a pattern is those plus the wildcards
_POINT_GLOB = r"^[-:./_A-Za-z0-9*?\[\]!]{1,255}$"
_NODE_GLOB = r"^[-:._A-Za-z0-9*?\[\]!]{1,128}$"


def _glob(what: str, chars: str, pattern: str) -> Callable[[str], str]:
    """The check of a pattern field, with a refusal a technician can read (not the regular expression)."""
    check = re.compile(pattern).match

    def valid(value: str) -> str:
        if not check(value):
            raise ValueError(f"{value!r} is not a {what} pattern: {chars} and the wildcards * ? [ ] only")
        return value

    return valid


PointGlob = Annotated[str, AfterValidator(_glob("point", "letters, digits, -:./_", _POINT_GLOB)),
                      JsonSchema({"type": "string", "pattern": _POINT_GLOB})]
NodeGlob = Annotated[str, AfterValidator(_glob("node", "letters, digits, -:._", _NODE_GLOB)),
                     JsonSchema({"type": "string", "pattern": _NODE_GLOB})]


class ReportRule(Model):
    """Which points, and how their readings are reported: filtered on change, throttled, or aggregated."""

    points: list[PointGlob] = Field(
        default_factory=lambda: ["*"], min_length=1,
        description="Point names this rule applies to: shell-style patterns (*, ?, [abc]), e.g. "
        "[temperature, 'flow_*']. The first rule whose points and nodes match is a point's rule.",
    )
    nodes: list[NodeGlob] = Field(
        default_factory=lambda: ["*"], min_length=1,
        description="Node ids this rule applies to (patterns as for points): the instance's own node "
        "for readings that name none, else the capillary node the driver named.",
    )
    on_change: bool = Field(
        default=False,
        description="Report a reading only when its value, unit or quality differs from the last one "
        "reported for the point.",
    )
    deadband: float | None = Field(
        default=None, ge=0,
        description="Report a number only when it differs from the last one reported by more than this "
        "(in the point's unit); other values are reported on change. 0 is on_change.",
    )
    deadband_percent: float | None = Field(
        default=None, gt=0, le=100,
        description="Report a number only when it differs from the last one reported by more than this "
        "percent of that value (any change when it was 0); other values are reported on change.",
    )
    max_interval: Duration | None = Field(
        default=None, gt=0,
        description="With on_change or a deadband: report a reading anyway when the last report of the "
        "point is this old (a heartbeat: silence then means 'unchanged', not 'gone').",
    )
    min_interval: Duration | None = Field(
        default=None, gt=0,
        description="Report at most one reading of the point per this time; readings sooner after the "
        "last report are left out (combine with a deadband to leave out only small changes).",
    )
    window: Duration | None = Field(
        default=None, ge=MIN_WINDOW, le=MAX_WINDOW,
        description="Aggregate each point's numbers over windows of this length, aligned to the clock "
        "(a 1m window runs from :00 to :00); each window is reported as one record per function in "
        "'aggregate', named <point>:<function> and stamped with the window's start.",
    )
    aggregate: list[Aggregate] = Field(
        default_factory=lambda: ["mean"], min_length=1,
        description="Functions reported per window: min, max, mean, count, last.",
    )

    @model_validator(mode="after")
    def _one_strategy(self) -> ReportRule:
        given = self.model_fields_set
        if self.deadband is not None and self.deadband_percent is not None:
            raise ValueError("deadband and deadband_percent exclude each other: give one band")
        if self.window is not None:
            clash = sorted(given & {"on_change", "deadband", "deadband_percent", "max_interval", "min_interval"})
            if clash:
                raise ValueError(f"window aggregates every reading of its points; {', '.join(clash)} "
                                 "cannot apply to it (put those points in a rule of their own)")
        elif "aggregate" in given:
            raise ValueError("aggregate needs a window (e.g. window: 1m)")
        if len(set(self.aggregate)) != len(self.aggregate):
            raise ValueError(f"aggregate lists a function twice: {self.aggregate}")
        if self.max_interval is not None and not self.filters_change:
            raise ValueError("max_interval needs on_change or a deadband: without one every reading is "
                             "reported anyway")
        if self.min_interval is not None and self.max_interval is not None and self.min_interval > self.max_interval:
            raise ValueError(f"min_interval ({self.min_interval:g}s) is longer than max_interval "
                             f"({self.max_interval:g}s): a point could never report as often as max_interval asks")
        return self

    @property
    def filters_change(self) -> bool:
        """Whether unchanged readings (within the band) are left out."""
        return self.on_change or self.deadband is not None or self.deadband_percent is not None

    @property
    def passes_all(self) -> bool:
        """A rule with no strategy: every reading of its points is reported."""
        return not self.filters_change and self.min_interval is None and self.window is None
