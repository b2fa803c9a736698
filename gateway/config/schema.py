"""The config schema, declared in code: every option has a type, a default and a description.

Driver sections are validated against each driver's own schema (a ``DriverConfig`` subclass
named in its manifest); see ``gateway.config.validate``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from gateway.schema import Field, Model, field_validator, model_validator
from gateway.units import ByteSize, Duration

CONFIG_VERSION = 2
"""The config format this build writes and reads; older versions are migrated on load (config/migrate.py)."""

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
"""A gateway or group id: it is a topic level and a file name, so no / + # or spaces."""
_ID = ID_PATTERN
MAX_BATCH_READINGS = 100_000
"""The most readings one batch may carry; receivers refuse a batch whose ``sq`` range is larger."""


class Section(Model):
    """Base of every config section: unknown keys are errors, values immutable."""


class GatewaySection(Section):
    """Who this gateway is and where it keeps its state."""

    id: str = Field(
        pattern=_ID,
        pattern_help="1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit (e.g. gw-0042)",
        description="Gateway identity; names the device key and the MQTT topics.",
    )
    site: str = Field(default="", description="Free text: where the gateway is (street cabinet, pole number).")
    state_dir: str = Field(
        default="/var/lib/sensegate", description="Directory for the buffer, blobs and batch counters."
    )
    key_file: str = Field(
        default="",
        description="Device signing key: a PEM file (mode 0600; default <state_dir>/keys/device.key), or a "
        "key on a PKCS#11 token (secure element, TPM 2.0) as an RFC 7512 URI, e.g. 'pkcs11:token=sensegate;"
        "object=device?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/sensegate/token.pin' "
        "(docs/security.md).",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Least severe log level written."
    )


    @field_validator("key_file")
    @classmethod
    def _key_uri(cls, value: str) -> str:
        if value.startswith("pkcs11:"):
            from gateway.pkcs11uri import parse

            parse(value)  # UriError (a ValueError) says which part is wrong; no I/O here
        return value


class BufferSection(Section):
    """The durable local buffer between drivers and uplinks (SQLite, WAL)."""

    path: str = Field(default="", description="Database file; default <state_dir>/buffer.db.")
    max_bytes: ByteSize = Field(
        default=256 * 1024**2, ge=1024 * 1024, description="Bound on buffered readings on disk."
    )
    max_blob_bytes: ByteSize = Field(
        default=256 * 1024**2,
        ge=1024 * 1024,
        description="Bound on stored images and other blobs waiting for upload; past it the oldest are "
        "dropped (counted and logged; the signed reading still carries the hash).",
    )
    max_age: Duration = Field(
        default=30 * 86400.0, gt=0, description="Readings older than this are dropped (and reported)."
    )
    policy: Literal["drop_oldest", "refuse_new"] = Field(
        default="drop_oldest",
        description="When full: drop the oldest buffered readings, or refuse new ones. Either way the "
        "next batch reports the dropped count and sequence range.",
    )
    commit_interval: Duration = Field(
        default=0.2,
        gt=0,
        le=60,
        description="Writes are grouped into one transaction committed at least this often; readings "
        "acknowledged upstream within it never reach the disk. An unclean stop (power cut, kill -9) loses "
        "at most about one interval of readings not yet acknowledged, and their numbers are declared to "
        "receivers (reason unclean_stop).",
    )
    commit_readings: int = Field(default=10_000, ge=1, description="Commit early once this many readings are waiting.")


class BatchSection(Section):
    """How readings are grouped into signed batches."""

    max_readings: int = Field(default=5000, ge=1, le=MAX_BATCH_READINGS,
                              description="Close a batch at this many readings.")
    max_bytes: ByteSize = Field(default=256 * 1024, ge=1024, description="Close a batch near this encoded size.")
    max_age: Duration = Field(
        default=0.5,
        ge=0,
        description="Longest a reading waits for its batch to fill while an earlier batch is in "
        "flight; an idle uplink takes a batch at once.",
    )
    min_interval: Duration = Field(
        default=0.05,
        ge=0,
        le=60,
        description="Shortest time between two batches while the uplink is idle: a busy trickle of "
        "readings becomes a few signed batches a second, each waiting at most this long.",
    )
    alg: Literal["ed25519", "es256"] = Field(default="ed25519", description="Signature algorithm.")


class JsonlUplink(Section):
    """Readings as JSON lines to stdout or a file: for debugging and for the demo."""

    type: Literal["jsonl"]
    name: str = Field(default="jsonl", description="Uplink name, unique in the config.")
    path: str = Field(default="-", description="File to append to; '-' is standard output.")


class TlsOptions(Section):
    """TLS for an uplink; a client certificate makes it mutual TLS."""

    ca_file: str = Field(default="", description="CA bundle that signs the broker's certificate; empty = system CAs.")
    cert_file: str = Field(default="", description="Client certificate (PEM) for mutual TLS.")
    key_file: str = Field(default="", description="Client private key (PEM) for mutual TLS.")
    insecure: bool = Field(default=False, description="Skip hostname verification (lab use only).")

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsOptions:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file go together (mutual TLS needs both)")
        return self


class MqttUplink(Section):
    """MQTT 3.1.1 or 5 with QoS 1; topic layout in docs/topics.md."""

    type: Literal["mqtt"]
    name: str = Field(default="mqtt", description="Uplink name, unique in the config.")
    url: str = Field(
        pattern=r"^mqtts?://[^/\s]+(:\d+)?/?$",
        pattern_help="mqtts://HOST:PORT (TLS) or mqtt://HOST:PORT, e.g. mqtts://broker.example.net:8883",
        description="Broker, as mqtt://HOST:PORT or mqtts://HOST:PORT (TLS).",
    )
    protocol: Literal["3.1.1", "5"] = Field(default="5", description="MQTT protocol version.")
    client_id: str = Field(default="", description="MQTT client id; default sensegate-<gateway id>.")
    username: str = Field(default="", description="User name for the broker.")
    password: str = Field(default="", description="Password; prefer password_file.")
    password_file: str = Field(default="", description="File holding the password.")
    topic_prefix: str = Field(default="sensegate", pattern=r"^[^#+\s]+$", description="First level of every topic.")
    tls: TlsOptions | None = Field(default=None, description="TLS settings (needed for mqtts://).")
    keepalive: Duration = Field(default=30.0, ge=5, le=3600, description="MQTT keepalive.")
    inflight: int = Field(default=8, ge=1, le=1000, description="Batches published but not yet acknowledged.")
    reconnect_max: Duration = Field(default=60.0, ge=1, description="Longest wait between reconnects.")


class CoapUplink(Section):
    """CoAP (RFC 7252): a confirmable POST per signed batch, block-wise when large; docs/coap.md."""

    type: Literal["coap"]
    name: str = Field(default="coap", description="Uplink name, unique in the config.")
    url: str = Field(
        pattern=r"^coaps?\+tcp://[^/\s]+/?$|^coap://[^/\s]+/?$",
        description="Server, as coap://HOST[:PORT] (UDP), coap+tcp://HOST[:PORT] or coaps+tcp://HOST[:PORT] "
        "(TCP / TLS, RFC 8323). Default port 5683 (5684 for coaps+tcp).",
    )
    path: str = Field(
        default="/sensegate/batch",
        pattern=r"^(/[^/\s?#]+)+$",
        description="Uri-Path of the resource batches are POSTed to (content-format 18, COSE_Sign1).",
    )
    blob_path: str = Field(
        default="/sensegate/blob",
        pattern=r"^(/[^/\s?#]+)+$",
        description="Blobs (camera images) are PUT to <blob_path>/<sha256 hex>.",
    )
    tls: TlsOptions | None = Field(
        default=None, description="TLS settings for coaps+tcp:// (CA, client certificate); default: system CAs."
    )
    oscore: str = Field(
        default="",
        description="Directory holding an OSCORE (RFC 8613) security context for this server "
        "(settings.json + secret.json; the gateway keeps sequence.json there). Empty: no OSCORE.",
    )
    timeout: Duration = Field(
        default=60.0,
        ge=1,
        le=3600,
        description="Longest wait for the answer to one POST, every block included; past it the server counts "
        "as unreachable and the batch is sent again later.",
    )
    inflight: int = Field(default=4, ge=1, le=64, description="POSTs in flight at once (each to its own batch).")
    reconnect_max: Duration = Field(
        default=60.0, ge=1, description="Longest wait between attempts after a failure (exponential backoff)."
    )

    @model_validator(mode="after")
    def _tls_needs_tls_scheme(self) -> CoapUplink:
        if self.tls is not None and not self.url.startswith("coaps+tcp://"):
            raise ValueError("tls settings only apply to coaps+tcp:// URLs")
        return self


Uplink = Annotated[JsonlUplink | MqttUplink | CoapUplink, Field(discriminator="type")]


class MetricsSection(Section):
    """The Prometheus text endpoint (GET /metrics) for the local node exporter or an ops agent."""

    enabled: bool = Field(default=False, description="Serve metrics; the packaged config turns this on.")
    listen: str = Field(
        default="127.0.0.1:9108",
        pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$",
        description="HOST:PORT to listen on; keep it on loopback (127.0.0.1 or [::1]), it has no authentication.",
    )
    status_interval: Duration = Field(
        default=60.0,
        ge=0,
        description="How often the health summary is published (retained) on the MQTT status topic; 0 = never.",
    )


class RemoteSection(Section):
    """Remote configuration and commands signed by ops keys (docs/remote.md).

    Only the local bootstrap file's section counts: a pushed config may not change it, so a
    push can never widen who is trusted.
    """

    ops_keys: list[str] = Field(
        default_factory=lambda: ["ops-keys"],
        description="Trusted ops public keys (PEM files, or directories of *.pem), relative to the config "
        "file's directory; none found means remote config and commands are off.",
    )
    groups: list[Annotated[str, Field(pattern=_ID)]] = Field(
        default_factory=list, description="Fleet groups this gateway belongs to (for group pushes and commands)."
    )
    max_document_bytes: ByteSize = Field(
        default=256 * 1024, ge=1024, le=1024 * 1024, description="Larger pushed documents are refused unread."
    )
    uplink_timeout: Duration = Field(
        default=30.0, gt=0, le=600, description="Health gate: the uplink must be connected this soon after an apply."
    )
    driver_timeout: Duration = Field(
        default=30.0, gt=0, le=600, description="Health gate: restarted driver instances must be running this soon."
    )
    require_drivers_running: bool = Field(
        default=True,
        description="Health gate: restarted driver instances must reach 'running' (device answers); false: only "
        "a fatal driver error (bad setup) rolls back.",
    )
    history: int = Field(default=3, ge=1, le=50, description="Earlier good configs kept for rollback.")
    coap_listen: str = Field(
        default="",
        pattern=r"^$|^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$",
        description="HOST:PORT (UDP) where the gateway accepts signed config pushes by CoAP PUT on "
        "/sensegate/config and serves its status on /sensegate/config/status; empty: MQTT only.",
    )
    commands: bool = Field(default=True, description="Accept signed commands (writes, snapshots, restarts, ping).")
    max_command_ttl: Duration = Field(
        default=3600.0, gt=0, le=7 * 86400, description="Commands expiring further ahead than this are refused."
    )


class Config(Section):
    """A whole gateway config; driver sections are validated separately per driver."""

    config_version: int = Field(
        default=CONFIG_VERSION, ge=1, description="Format version of this file (for migration)."
    )
    gateway: GatewaySection = Field(description="Gateway identity and state directory.")
    buffer: BufferSection = Field(default_factory=BufferSection, description="Durable local buffer.")
    batch: BatchSection = Field(default_factory=BatchSection, description="Signed batches.")
    uplinks: list[Uplink] = Field(
        default_factory=lambda: [JsonlUplink(type="jsonl")],
        description="Where batches go; default: JSON lines on standard output.",
    )
    uplink_mode: Literal["failover", "all"] = Field(
        default="failover",
        description="With several uplinks: 'failover' sends each batch over the first connected uplink in "
        "list order (the first is the primary); 'all' keeps each batch until every uplink acknowledged it.",
    )
    metrics: MetricsSection = Field(default_factory=MetricsSection, description="Prometheus metrics endpoint.")
    remote: RemoteSection = Field(
        default_factory=RemoteSection, description="Signed remote config and commands (trust anchor: this file)."
    )
    drivers: list[Any] = Field(
        default_factory=list, description="Driver instances: `driver: <name>` plus that driver's options."
    )
