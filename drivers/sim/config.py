"""Schema of the sim driver's options."""

from __future__ import annotations

from typing import Literal

from gateway.driver_api import DriverConfig
from gateway.schema import Field, Model, model_validator
from gateway.units import Duration

Scalar = float | int | bool | str


class SimPoint(Model):
    """One simulated point."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Point name.")
    unit: str | None = Field(default=None, description="SenML unit, e.g. Cel, %RH, V, W, kWh.")
    pattern: Literal["constant", "counter", "sine", "random_walk", "step"] = Field(
        default="sine", description="How values change."
    )
    value: Scalar = Field(default=0, description="constant: the value.")
    low: float = Field(default=0.0, description="sine/random_walk: lowest value.")
    high: float = Field(default=100.0, description="sine/random_walk: highest value.")
    period: Duration = Field(default=60.0, gt=0, description="sine: period.")
    step: float = Field(default=1.0, description="counter: increment; random_walk: largest move.")
    values: list[Scalar] = Field(default_factory=list, description="step: values cycled through.")
    hold: Duration = Field(default=10.0, gt=0, description="step: how long each value holds.")
    seed: int | None = Field(default=None, description="random_walk: seed for repeatable runs.")

    @model_validator(mode="after")
    def _check(self) -> SimPoint:
        if self.pattern == "step" and not self.values:
            raise ValueError("pattern 'step' needs a non-empty 'values' list")
        if self.pattern in ("sine", "random_walk") and self.low > self.high:
            raise ValueError("low must not be above high")
        if self.pattern == "counter" and not float(self.step).is_integer():
            raise ValueError("counter step must be a whole number")
        return self


class SimConfig(DriverConfig):
    """A simulated device: points with generated values, optionally many nodes and bursts."""

    points: list[SimPoint] = Field(min_length=1, description="The simulated points.")
    nodes: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="0: one node (the instance's); N: N capillary nodes <node_prefix>-1..N (path ip3).",
    )
    node_prefix: str = Field(
        default="sim", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$", description="Name stem of simulated nodes."
    )
    repeat: int = Field(default=1, ge=1, le=100_000, description="Readings per point per node per poll (load).")
