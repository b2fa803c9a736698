"""The opcua driver's options: one OPC UA server, its security, and the variables to read.

Validation does no I/O and needs no OPC UA library: node ids and browse paths are checked here;
certificate files are opened in setup.
"""

from __future__ import annotations

from typing import Literal

from drivers.opcua import nodes
from gateway.driver_api import DriverConfig
from gateway.schema import Field, Model, field_validator, model_validator
from gateway.units import Duration

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class PointOptions(Model):
    """One variable of the server."""

    name: str = Field(pattern=_NAME, description="Point name (the reading's name).")
    node_id: str = Field(default="", description="Node id, e.g. ns=2;i=7 or ns=2;s=Boiler.Temperature.")
    browse_path: str = Field(
        default="", description="Or: browse path below Objects, e.g. 2:Boiler/2:Temperature (resolved at setup)."
    )
    mode: Literal["poll", "subscribe"] = Field(
        default="poll", description="poll: read every interval; subscribe: data change notifications."
    )
    scale: float = Field(default=1.0, description="Reading = value * scale + offset (numbers only).")
    offset: float = Field(default=0.0, description="Added after scaling.")
    precision: int | None = Field(default=None, ge=0, le=12, description="Round scaled values to this many decimals.")
    unit: str | None = Field(default=None, description="SenML unit, e.g. Cel, Pa, W.")
    writable: bool = Field(default=False, description="Allow writes (commands) to this variable.")
    min: float | None = Field(default=None, description="Lowest value a write may set (reading units).")
    max: float | None = Field(default=None, description="Highest value a write may set (reading units).")

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, v: str) -> str:
        return nodes.parse_node_id(v) if v else v

    @field_validator("browse_path")
    @classmethod
    def _browse(cls, v: str) -> str:
        if v:
            nodes.parse_browse_path(v)
        return v

    @model_validator(mode="after")
    def _one(self) -> PointOptions:
        if bool(self.node_id) == bool(self.browse_path):
            raise ValueError(f"point {self.name}: give either node_id or browse_path")
        return self

    def spec(self) -> nodes.PointSpec:
        """The protocol module's view of this entry."""
        return nodes.PointSpec(
            name=self.name,
            node_id=self.node_id,
            browse_path=self.browse_path,
            mode=self.mode,
            scale=self.scale,
            offset=self.offset,
            precision=self.precision,
            unit=self.unit,
            writable=self.writable,
            min=self.min,
            max=self.max,
        )


class OpcUaConfig(DriverConfig):
    """An OPC UA server read by this gateway as a client."""

    url: str = Field(pattern=r"^opc\.tcp://[^\s/]+(/.*)?$", description="Endpoint, e.g. opc.tcp://10.0.0.5:4840/.")
    security: Literal["none", "sign", "sign_and_encrypt"] = Field(
        default="none", description="Message security with policy Basic256Sha256: none, sign or sign_and_encrypt."
    )
    certificate: str = Field(default="", description="Client certificate file (DER or PEM), for sign/sign_and_encrypt.")
    private_key: str = Field(default="", description="Client private key file (PEM), for sign/sign_and_encrypt.")
    server_certificate: str = Field(
        default="", description="The server's certificate (DER or PEM) to pin; empty: the one the server offers."
    )
    application_uri: str = Field(
        default="urn:sensegate:client", description="This client's application URI (must match its certificate)."
    )
    username: str = Field(default="", description="User name, if the server wants one.")
    password: str = Field(default="", description="Password for username.")
    request_timeout: Duration = Field(default=2.0, gt=0, description="Longest wait for one reply.")
    publishing_interval: Duration = Field(
        default=0.5, gt=0, description="How often the server sends data changes of subscribed points."
    )
    max_pending: int = Field(
        default=10000,
        ge=1,
        le=1_000_000,
        description="Data changes kept between two polls; beyond it the oldest are dropped and counted.",
    )
    points: list[PointOptions] = Field(min_length=1, description="The variables read.")

    @model_validator(mode="after")
    def _check(self) -> OpcUaConfig:
        if self.security != "none" and not (self.certificate and self.private_key):
            raise ValueError(f"security {self.security} needs certificate and private_key")
        names: set[str] = set()
        for p in self.points:
            if p.name in names:
                raise ValueError(f"point {p.name!r} appears twice")
            names.add(p.name)
        if self.request_timeout > self.timeout:
            raise ValueError(f"timeout ({self.timeout:g}s) must cover request_timeout ({self.request_timeout:g}s)")
        return self
