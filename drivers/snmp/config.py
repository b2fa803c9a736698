"""The snmp driver's options: one agent (v2c community or v3 USM user), its OIDs, and traps.

Validation does no I/O and needs no SNMP library: OIDs are numeric and checked here.
"""

from __future__ import annotations

from typing import Literal

from drivers.snmp import oids
from gateway.driver_api import DriverConfig
from gateway.schema import Field, Model, field_validator, model_validator
from gateway.units import Duration

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class OidOptions(Model):
    """One polled OID (or table column), also used to name the variables of traps."""

    name: str = Field(pattern=_NAME, description="Point name; a walked column gives <name>.<index>.")
    oid: str = Field(description="Numeric OID, e.g. 1.3.6.1.2.1.33.1.2.4.0 (MIB names are not resolved).")
    walk: bool = Field(
        default=False, description="A table column or subtree: read every instance below the OID with GETBULK."
    )
    type: Literal["auto", "number", "string", "hex"] = Field(
        default="auto",
        description="auto: numbers stay numbers (TimeTicks in seconds), text stays text; number: parse numeric "
        "text too; string: always text; hex: octets as 00:1a:2b (MAC addresses).",
    )
    scale: float = Field(default=1.0, description="Reading = value * scale + offset (numbers only).")
    offset: float = Field(default=0.0, description="Added after scaling.")
    precision: int | None = Field(default=None, ge=0, le=12, description="Round scaled values to this many decimals.")
    unit: str | None = Field(default=None, description="SenML unit, e.g. Cel, V, %, s (TimeTicks default to s).")

    @field_validator("oid")
    @classmethod
    def _oid(cls, v: str) -> str:
        return oids.oid_str(oids.parse_oid(v))

    def spec(self) -> oids.PointSpec:
        """The protocol module's view of this entry."""
        return oids.PointSpec(
            name=self.name, oid=oids.parse_oid(self.oid), walk=self.walk, type=self.type,
            scale=self.scale, offset=self.offset, precision=self.precision, unit=self.unit,
        )


class TrapOptions(Model):
    """The trap receiver of this instance."""

    port: int = Field(
        default=162,
        ge=0,
        le=65535,
        description="UDP port to receive traps on (162 needs root or CAP_NET_BIND_SERVICE; 0: any free port).",
    )
    address: str = Field(default="0.0.0.0", description="Local address to listen on.")
    communities: list[str] = Field(
        default_factory=list, description="v2c communities accepted; default: the instance's community (v2c)."
    )
    engine_ids: list[str] = Field(
        default_factory=list,
        description="v3: engine IDs (hex) of the agents whose traps are accepted, "
        "authenticated with this instance's user.",
    )
    max_pending: int = Field(
        default=10000,
        ge=1,
        le=1_000_000,
        description="Traps kept between two polls; beyond it the oldest are dropped and counted.",
    )

    @field_validator("engine_ids")
    @classmethod
    def _engine_ids(cls, v: list[str]) -> list[str]:
        for e in v:
            oids.parse_engine_id(e)
        return v


class SnmpConfig(DriverConfig):
    """An SNMP agent polled for OIDs, and/or a trap receiver."""

    host: str = Field(default="", description="Agent address (name or IP); empty for a trap-only instance.")
    port: int = Field(default=161, ge=1, le=65535, description="Agent UDP port.")
    version: Literal["v2c", "v3"] = Field(default="v2c", description="SNMP version: v2c (community) or v3 (USM user).")
    community: str = Field(default="public", max_length=255, description="v2c community.")
    user: str = Field(default="", max_length=32, description="v3 USM user name.")
    auth_protocol: Literal["none", "md5", "sha", "sha224", "sha256", "sha384", "sha512"] = Field(
        default="sha256", description="v3 authentication protocol (none for noAuthNoPriv)."
    )
    auth_key: str = Field(default="", description="v3 authentication pass phrase (at least 8 characters).")
    priv_protocol: Literal["none", "des", "3des", "aes", "aes192", "aes256"] = Field(
        default="aes", description="v3 privacy (encryption) protocol (none for authNoPriv)."
    )
    priv_key: str = Field(default="", description="v3 privacy pass phrase (at least 8 characters).")
    context: str = Field(default="", description="v3 context name (most agents: empty).")
    request_timeout: Duration = Field(default=1.0, gt=0, description="Longest wait for one reply.")
    retries: int = Field(default=1, ge=0, le=5, description="Extra attempts of a request that got no reply.")
    max_oids_per_request: int = Field(default=20, ge=1, le=200, description="Scalar OIDs asked in one GET.")
    max_repetitions: int = Field(default=25, ge=1, le=200, description="Rows asked per GETBULK of a walk.")
    max_walk_rows: int = Field(
        default=1000, ge=1, le=100_000, description="Most instances one walked OID yields per poll."
    )
    oids: list[OidOptions] = Field(
        default_factory=list, description="OIDs polled every interval (and names for trap variables)."
    )
    traps: TrapOptions | None = Field(default=None, description="Receive traps (omit: no trap receiver).")

    @model_validator(mode="after")
    def _check(self) -> SnmpConfig:
        if self.oids and not self.host:
            raise ValueError("polled oids need host (the agent's address)")
        if not self.oids and self.traps is None:
            raise ValueError("give oids to poll, traps to receive, or both")
        names: set[str] = set()
        for o in self.oids:
            if o.name in names:
                raise ValueError(f"point {o.name!r} appears twice")
            names.add(o.name)
        if self.version == "v3":
            if not self.user:
                raise ValueError("version v3 needs user")
            keys = (("auth", self.auth_protocol, self.auth_key), ("priv", self.priv_protocol, self.priv_key))
            for what, proto, key in keys:
                if proto != "none" and len(key) < 8:
                    raise ValueError(f"{what}_protocol {proto} needs {what}_key of at least 8 characters (RFC 3414)")
            if self.auth_protocol == "none" and self.priv_protocol != "none":
                raise ValueError("privacy needs authentication: set auth_protocol, or priv_protocol: none")
        elif self.traps is not None and self.traps.engine_ids:
            raise ValueError("traps.engine_ids are for version v3")
        worst = (self.retries + 1) * self.request_timeout
        if self.oids and worst > self.timeout:
            raise ValueError(
                f"timeout ({self.timeout:g}s) must cover one request with its retries ({worst:g}s): "
                "raise timeout or lower request_timeout"
            )
        return self

    def specs(self) -> list[oids.PointSpec]:
        """The polled points, in the protocol module's terms."""
        return [o.spec() for o in self.oids]
