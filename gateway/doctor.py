"""`sensegate doctor`: find what stops this gateway from working, in plain words, with a fix each.

Every check returns a ``Finding`` (ok / warn / fail, what is wrong, how to fix it). Checks read
the validated config generically (each instance's ``model_dump()``), so a new driver gets its
serial ports, devices and network cameras checked without doctor knowing it:

- an option named ``port`` or ``device`` whose value is a /dev path must exist and be
  readable and writable by the service user;
- an instance with a ``url`` (http, https, rtsp) must accept a TCP connection;
- ``driver: ble`` needs a Bluetooth adapter in sysfs that rfkill does not block.

The exit status is the worst finding: 0 ok, 1 warnings, 2 failures (the Nagios convention).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import grp
import json
import os
import pwd
import shutil
import socket
import ssl
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from gateway.clock import ClockState, kernel_clock
from gateway.config import ConfigInvalid, GatewayConfig, load_config
from gateway.doctor_agent import UnitState, fetch_status, systemd_unit
from gateway.mqtt import MqttError, MqttSession, MqttSettings

Status = Literal["ok", "warn", "fail"]
EXIT = {"ok": 0, "warn": 1, "fail": 2}
SERVICE_USER = "sensegate"
PLACEHOLDER_IDS = {"CHANGE-ME", "change-me", "changeme"}
CLOCK_FLOOR = dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp()
"""No real clock reads earlier than this; a Pi without RTC boots at its last saved time (or 1970)."""
CLOCK_CEILING = dt.datetime(2036, 1, 1, tzinfo=dt.UTC).timestamp()
"""Nor later than this (a bad RTC, a wrong manual date): certificates and timestamps would be wrong."""
MIN_FREE_BYTES = 64 * 1024 * 1024
BACKLOG_WARN_AGE = 600.0
DEVICE_GROUPS = (("tty", "dialout"), ("i2c-", "i2c"), ("video", "video"), ("gpiochip", "gpio"), ("hidraw", "plugdev"))
"""The group a udev rule gives a device node, by its kernel name (Debian's own groups for them)."""


@dataclass(frozen=True)
class Finding:
    """One check's result, for humans (message, fix) and machines (status)."""

    check: str
    status: Status
    message: str
    fix: str = ""


@dataclass
class Environment:
    """Where doctor looks; tests point it at fakes (a sysfs tree, a clock state)."""

    service_user: str = SERVICE_USER
    bluetooth_sysfs: Path = Path("/sys/class/bluetooth")
    clock: Callable[[], ClockState] = kernel_clock
    now: Callable[[], float] = time.time
    # whether this system keeps its own clock (systemd runs here); False in a container, a
    # chroot or a test bench, where the host keeps the time and its NTP state may be invisible
    keeps_time: Callable[[], bool] = lambda: os.path.isdir("/run/systemd/system")
    connect_timeout: float = 3.0
    expiry_warn_days: float = 30.0
    backlog_warn_age: float = BACKLOG_WARN_AGE
    bluetooth_drivers: frozenset[str] = frozenset({"ble"})
    state_dir: Path = Path("/var/lib/sensegate")  # where first boot leaves its verdict
    # the running agent: systemd's view of the unit, and the agent's own GET /status
    unit: Callable[[], UnitState | None] = systemd_unit
    agent: Callable[[str, float], dict[str, Any] | str] = fetch_status
    look_at_agent: bool = True  # False: the files only (provision runs before the agent starts)


# -- helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _User:
    name: str
    uid: int
    gids: frozenset[int]
    exists: bool


def _user(name: str) -> _User:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:  # no service user here (a developer machine): judge for whoever runs doctor
        me = pwd.getpwuid(os.geteuid())
        return _User(me.pw_name, me.pw_uid, frozenset(os.getgroups()) | {os.getegid()}, False)
    return _User(pw.pw_name, pw.pw_uid, frozenset(os.getgrouplist(pw.pw_name, pw.pw_gid)), True)


def _access(st: os.stat_result, user: _User, want: int) -> bool:
    """Would ``user`` get ``want`` (bits of 0o7) on a file with this stat (owner, group, other)?"""
    if user.uid == 0:
        return True
    mode = st.st_mode
    if st.st_uid == user.uid:
        bits = (mode >> 6) & 7
    elif st.st_gid in user.gids:
        bits = (mode >> 3) & 7
    else:
        bits = mode & 7
    return bits & want == want


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) for every leaf of a model_dump()."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, value


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _days(seconds: float) -> str:
    d = seconds / 86400
    return f"{d:.0f} days" if abs(d) >= 2 else f"{seconds / 3600:.0f} hours"


# -- the checks ---------------------------------------------------------------------------------


def check_config(path: Path) -> tuple[Finding, GatewayConfig | None]:
    """The config file parses and validates."""
    from gateway.registry import Registry

    try:
        cfg = load_config(path, Registry.discover())
    except ConfigInvalid as e:
        lines = str(e).splitlines()
        more = f" (and {len(lines) - 3} more)" if len(lines) > 3 else ""
        msg = "invalid:\n" + "\n".join(lines[:3]) + more
        if not path.exists():
            return Finding(
                "config", "fail", f"{path} does not exist", "sudo sensegate provision --id <GATEWAY-ID>"
            ), None
        return Finding("config", "fail", msg, f"edit {path}; `sensegate check {path}` lists every problem"), None
    c = cfg.config
    text = f"valid: gateway {c.gateway.id}, {len(cfg.instances)} driver instance(s), {len(c.uplinks)} uplink(s)"
    return Finding("config", "ok", text), cfg


def check_identity(cfg: GatewayConfig) -> Finding:
    """The gateway id is not the packaged placeholder."""
    gid = cfg.config.gateway.id
    if gid in PLACEHOLDER_IDS:
        return Finding(
            "identity",
            "fail",
            f"gateway id is still the placeholder {gid!r}: batches and topics would carry it",
            "sudo sensegate provision --id <GATEWAY-ID>",
        )
    return Finding("identity", "ok", f"gateway {gid}")


def check_key(cfg: GatewayConfig, env: Environment) -> Finding:
    """The device key exists, is private (0600), belongs to the service user and fits batch.alg."""
    from gateway.keys import KeyFileError, alg_of, fingerprint, load_private_key
    from gateway.signing import key_path

    path = key_path(cfg)
    try:
        key = load_private_key(path)
    except KeyFileError as e:
        if not path.exists():
            fix = f"sudo sensegate provision --id <GATEWAY-ID> (or: sudo sensegate keys init --dir {path.parent})"
        elif os.stat(path).st_mode & 0o077:
            fix = f"sudo chmod 600 {path}"
        else:
            fix = f"check {path}; make a new one with: sudo sensegate keys init --force --dir {path.parent}"
        return Finding("signing key", "fail", str(e), fix)
    want = cfg.config.batch.alg
    if alg_of(key) != want:
        return Finding(
            "signing key",
            "fail",
            f"{path} is an {alg_of(key)} key but batch.alg is {want}",
            f"set batch.alg: {alg_of(key)} in the config, or make an {want} key with "
            f"sudo sensegate keys init --alg {want} --force --dir {path.parent}",
        )
    user = _user(env.service_user)
    st = path.stat()
    if user.exists and st.st_uid != user.uid:
        owner = pwd.getpwuid(st.st_uid).pw_name if st.st_uid in {p.pw_uid for p in pwd.getpwall()} else st.st_uid
        return Finding(
            "signing key",
            "fail",
            f"{path} belongs to {owner}; the service runs as {user.name} and cannot read it",
            f"sudo chown -R {user.name}: {path.parent}",
        )
    return Finding(
        "signing key", "ok", f"{path} ({alg_of(key)}, mode 0600), fingerprint {fingerprint(key.public_key())}"
    )


def check_token_key(cfg: GatewayConfig, env: Environment) -> list[Finding]:
    """A key on a PKCS#11 token: the library and token are there, the PIN is readable by the service
    user alone, and the key signs (a probe, verified with its public key) with batch.alg."""
    import threading

    from gateway.keys import KeyFileError, fingerprint
    from gateway.pkcs11uri import UriError, parse

    spec = cfg.config.gateway.key_file
    try:
        uri = parse(spec, resolve_module=True)
    except UriError as e:
        return [Finding("signing key", "fail", f"gateway.key_file: {e}", "fix the pkcs11: URI (docs/security.md)")]
    out: list[Finding] = []
    if not os.path.isfile(uri.module):
        return [Finding("token", "fail", f"no PKCS#11 module at {uri.module}",
                        "install the token's package (SoftHSM2: softhsm2; TPM 2.0: libtpm2-pkcs11-1; "
                        "ATECC608: cryptoauthlib) or fix module-path in gateway.key_file")]
    pin_file = uri.pin_file()
    user = _user(env.service_user)
    if pin_file is None:
        var = uri.pin_source[4:]
        out.append(Finding("token PIN", "ok" if var in os.environ else "warn",
                           f"the PIN comes from the environment variable {var}"
                           + ("" if var in os.environ else ", which is not set here"),
                           f"set {var} in the service's environment (systemd: an EnvironmentFile= of mode 0600), "
                           "or use pin-source=file:/etc/sensegate/token.pin"))
    else:
        try:
            st = pin_file.stat()
        except OSError as e:
            return [*out, Finding("token PIN", "fail", f"cannot read the PIN file {pin_file}: {e.strerror or e}",
                                  f"write the user PIN into {pin_file} (mode 0600, owned by {user.name})")]
        if st.st_mode & 0o077:
            out.append(Finding("token PIN", "fail", f"{pin_file} is readable by others "
                               f"(mode {stat.S_IMODE(st.st_mode):04o})", f"sudo chmod 600 {pin_file}"))
        elif not _access(st, user, 4):
            out.append(Finding("token PIN", "fail", f"{pin_file} is not readable by {user.name}",
                               f"sudo chown {user.name}: {pin_file}"))
        else:
            out.append(Finding("token PIN", "ok", f"{pin_file} (mode {stat.S_IMODE(st.st_mode):04o}, "
                               f"readable by {user.name} only)"))
    result: list[Any] = []

    def probe() -> None:
        from gateway.hsm import open_token_key

        try:
            key = open_token_key(spec)
        except KeyFileError as e:
            result.append(e)
            return
        result.append(key)
        key.close()

    worker = threading.Thread(target=probe, name="doctor-token", daemon=True)
    worker.start()
    worker.join(env.connect_timeout * 5)
    if not result:
        return [*out, Finding("signing key", "fail", f"{uri.describe()}: the token did not answer within "
                              f"{env.connect_timeout * 5:g} s", "check the token is plugged in and its daemon runs")]
    if isinstance(result[0], KeyFileError):
        return [*out, Finding("signing key", "fail", str(result[0]),
                              "check the token is present and the URI's token=/object= match "
                              "(pkcs11-tool --module MODULE --list-objects --login)")]
    key = result[0]
    want = cfg.config.batch.alg
    if key.alg != want:
        return [*out, Finding("signing key", "fail", f"{uri.describe()} is an {key.alg} key but batch.alg is {want}",
                              f"set batch.alg: {key.alg} in the config")]
    return [*out, Finding("signing key", "ok", f"{uri.describe()} ({key.alg}, signs on the token), "
                          f"fingerprint {fingerprint(key.public_key())}")]


def check_devices(cfg: GatewayConfig, env: Environment) -> list[Finding]:
    """Every /dev path named by a `port` or `device` option exists and the service user may use it."""
    user = _user(env.service_user)
    who = user.name if user.exists else f"{user.name} (no {env.service_user!r} user here)"
    out: list[Finding] = []
    for inst in cfg.instances:
        dump = inst.config.model_dump()
        if dump.get("url"):  # a network source: its device/port defaults are not used
            continue
        for key, value in _walk(dump):
            leaf = key.rsplit(".", 1)[-1]
            if leaf not in ("port", "device") or not isinstance(value, str) or not value.startswith("/dev/"):
                continue
            what = f"{inst.name}: {key} {value}"
            try:
                st = os.stat(value)
            except FileNotFoundError:
                out.append(
                    Finding(
                        "devices",
                        "fail",
                        f"{what} does not exist",
                        "check the cable/adapter is plugged in and powered; `ls -l /dev/serial/by-id/` lists USB "
                        "serial adapters by a name that survives reboots (use it in the config)",
                    )
                )
                continue
            except OSError as e:
                out.append(Finding("devices", "fail", f"{what}: {e.strerror}", f"ls -l {value}"))
                continue
            if not stat.S_ISCHR(st.st_mode):
                out.append(Finding("devices", "warn", f"{what} is not a character device", f"ls -l {value}"))
                continue
            if not _access(st, user, 6):
                group = _group_name(st.st_gid)
                out.append(
                    Finding(
                        "devices",
                        "fail",
                        f"{what}: {who} may not read and write it (owner {st.st_uid}, group {group}, "
                        f"mode {stat.S_IMODE(st.st_mode):04o})",
                        _device_access_fix(value, st, user),
                    )
                )
                continue
            out.append(Finding("devices", "ok", f"{what} present, {who} may use it"))
    return out


def check_bluetooth(cfg: GatewayConfig, env: Environment) -> Finding | None:
    """`driver: ble` needs an adapter that rfkill does not block."""
    users = [i.name for i in cfg.instances if i.manifest.name in env.bluetooth_drivers]
    if not users:
        return None
    adapters = sorted(env.bluetooth_sysfs.glob("hci*"))
    if not adapters:
        return Finding(
            "bluetooth",
            "fail",
            f"no Bluetooth adapter in {env.bluetooth_sysfs} (needed by {', '.join(users)})",
            "on a Pi: remove dtoverlay=disable-bt from /boot/firmware/config.txt and reboot, then "
            "`sudo systemctl enable --now hciuart bluetooth`; for a USB dongle: plug it in, check `lsusb`",
        )
    usable = []
    for hci in adapters:
        blocked = ""
        for rf in hci.glob("rfkill*"):
            with contextlib.suppress(OSError):
                if (rf / "hard").read_text().strip() == "1":
                    blocked = "hard"
                elif (rf / "soft").read_text().strip() == "1":
                    blocked = blocked or "soft"
        if not blocked:
            usable.append(hci.name)
        elif blocked == "hard":
            return Finding(
                "bluetooth",
                "fail",
                f"{hci.name} is switched off in hardware (rfkill hard block)",
                "check the device's radio switch / firmware settings",
            )
        else:
            return Finding("bluetooth", "fail", f"{hci.name} is blocked by rfkill", "sudo rfkill unblock bluetooth")
    return Finding("bluetooth", "ok", f"adapter {', '.join(usable)} present")


def _tcp(host: str, port: int, timeout: float) -> tuple[socket.socket | None, str, float]:
    t0 = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as e:
        return None, f"cannot resolve {host}: {e.strerror}", 0.0
    except TimeoutError:
        return None, f"no answer from {host}:{port} within {timeout:g}s", 0.0
    except OSError as e:
        return None, f"cannot connect to {host}:{port}: {e.strerror or e}", 0.0
    return sock, "", time.monotonic() - t0


def check_network_sources(cfg: GatewayConfig, env: Environment) -> list[Finding]:
    """Every instance with a url (cameras and other network devices) accepts a TCP connection."""
    defaults = {"http": 80, "https": 443, "rtsp": 554, "rtsps": 322}
    out = []
    for inst in cfg.instances:
        url = inst.config.model_dump().get("url")
        if not isinstance(url, str) or not url:
            continue
        parts = urlsplit(url)
        if parts.scheme not in defaults or not parts.hostname:
            continue
        check = "camera" if inst.manifest.name == "camera" else "network device"
        host, port = parts.hostname, parts.port or defaults[parts.scheme]
        sock, why, took = _tcp(host, port, env.connect_timeout)
        if sock is None:
            out.append(
                Finding(
                    check,
                    "fail",
                    f"{inst.name}: {why}",
                    f"check the {check}'s power, cable and address; from the gateway: "
                    f"`curl -v {parts.scheme}://{host}:{port}/` (http) or `ffprobe {url}` (rtsp)",
                )
            )
            continue
        sock.close()
        out.append(Finding(check, "ok", f"{inst.name}: {host}:{port} reachable in {took * 1000:.0f} ms"))
    return out


def _date(ts: float) -> str:
    return f"{dt.datetime.fromtimestamp(ts, dt.UTC):%Y-%m-%d %H:%M} UTC"


def check_clock(env: Environment) -> Finding:
    """The clock reads a possible date and is synchronised: without it every timestamp (and TLS) is wrong."""
    now = env.now()
    if now < CLOCK_FLOOR or now > CLOCK_CEILING:
        when = "behind" if now < CLOCK_FLOOR else "ahead"
        return Finding(
            "clock",
            "fail",
            f"the clock says {_date(now)}, which cannot be right (years {when}); readings would carry worthless "
            "timestamps, and TLS certificates look " + ("not yet valid" if now < CLOCK_FLOOR else "expired"),
            "connect the gateway to a network with NTP (UDP 123), then `timedatectl timesync-status`; "
            "a Pi has no battery clock and needs NTP (or an RTC) after every power cut"
            + ("; a wrong RTC or a date set by hand: sudo timedatectl set-time 'YYYY-MM-DD HH:MM'"
               if now > CLOCK_CEILING else ""),
        )
    try:
        state = env.clock()
    except OSError as e:
        return Finding("clock", "warn", f"cannot read the clock's sync state: {e}", "timedatectl status")
    if not state.synchronised and not env.keeps_time():
        return Finding(
            "clock",
            "warn",
            f"reads {_date(now)}; its NTP state cannot be seen here (a container, chroot or test bench: the host keeps "
            "the time)",
            "check the host's clock: timedatectl (on the host)",
        )
    if not state.synchronised:
        return Finding(
            "clock",
            "fail",
            f"the clock is not synchronised (NTP): it reads {_date(now)}; timestamps are worthless without it",
            "sudo timedatectl set-ntp true; set NTP= in /etc/systemd/timesyncd.conf if the site has its own NTP "
            "server; check UDP 123 is allowed; then `timedatectl timesync-status`",
        )
    err = f", max error {state.max_error_s * 1000:.0f} ms" if state.max_error_s is not None else ""
    return Finding("clock", "ok", f"synchronised{err}")


def check_disk(cfg: GatewayConfig, env: Environment) -> Finding:
    """The state directory exists, the service user may write it, and the buffer's bound fits on the disk."""
    from gateway.pipeline import buffer_path

    c = cfg.config
    state = Path(c.gateway.state_dir)
    user = _user(env.service_user)
    if not state.is_dir():
        return Finding(
            "disk",
            "fail",
            f"state directory {state} does not exist",
            f"sudo install -d -o {user.name} -g {user.name} -m 0750 {state}",
        )
    if user.exists and not _access(state.stat(), user, 3):
        return Finding("disk", "fail", f"{user.name} may not write {state}", f"sudo chown -R {user.name}: {state}")
    db = buffer_path(cfg)
    used = sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file()) if db.parent.is_dir() else 0
    usage = shutil.disk_usage(db.parent if db.parent.is_dir() else state)
    need = max(0, c.buffer.max_bytes - used)
    free = usage.free
    if free < MIN_FREE_BYTES:
        return Finding(
            "disk",
            "fail",
            f"only {format_bytes(free)} free for the buffer in {db.parent}",
            "free space (`sudo journalctl --vacuum-size=50M`, old logs, images), or use a larger SD card",
        )
    if free < need:
        return Finding(
            "disk",
            "warn",
            f"the buffer may grow to {format_bytes(c.buffer.max_bytes)} but only {format_bytes(free)} are free in "
            f"{db.parent}: a long outage would fill the disk before the buffer's bound",
            f"lower buffer.max_bytes to at most {format_bytes(int(free * 0.8))}, or free space",
        )
    return Finding(
        "disk", "ok", f"{format_bytes(free)} free in {db.parent}, buffer bound {format_bytes(c.buffer.max_bytes)}"
    )


def _await_tls_alert(conn: ssl.SSLSocket, wait: float = 0.5) -> None:
    """Raise the ssl.SSLError a TLS 1.3 server sends just after the handshake (a client
    certificate it wants and did not get, or refuses); an MQTT broker says nothing else before
    CONNECT, so silence for ``wait`` seconds means it accepted us."""
    conn.settimeout(wait)
    with contextlib.suppress(TimeoutError):
        conn.recv(1)


def _mqtt_login(settings: MqttSettings, timeout: float) -> MqttError | None:
    """Connect and log in as the uplink would (gateway.mqtt, the daemon's own client), then
    disconnect cleanly; None when the broker accepted, else why not. Runs its own event loop
    (doctor is a plain command)."""

    async def attempt() -> MqttError | None:
        session = MqttSession(settings)
        try:
            await session.connect(within=timeout)
        except MqttError as e:
            return e
        await session.close()
        return None

    return asyncio.run(attempt())


# CONNACK reason codes (MQTT 5 numbering; paho gives MQTT 3.1.1's 1-5 as 132, 133, 136, 134, 135)
_CONNACK = {
    132: "refused the protocol version",
    133: "rejected the client id",
    136: "is unavailable",
    134: "rejected the user name or password",
    135: "says this client is not authorised (wrong user name or password, or not allowed by its ACL)",
}


def _peer_cert_unverified(host: str, port: int, timeout: float) -> Any:
    """The broker's certificate without verifying it, to say why verification failed."""
    from cryptography import x509

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der) if der else None


def check_broker(cfg: GatewayConfig, env: Environment) -> list[Finding]:
    """Each MQTT uplink's broker: not open to eavesdropping or impersonation, reachable, TLS
    verified, certificates not expiring, CONNECT accepted."""
    from cryptography import x509

    from gateway.mqtt import MqttSettings, insecurities

    out: list[Finding] = []
    gid = cfg.config.gateway.id
    for up in cfg.config.uplinks:
        if up.type != "mqtt":
            continue
        parts = urlsplit(up.url)
        tls_on = parts.scheme == "mqtts"
        host, port = parts.hostname or "", parts.port or (8883 if tls_on else 1883)
        name = f"broker {up.name}"
        tls = up.tls
        mark = len(out)  # warnings found on the way replace the final "ok"
        unsafe = insecurities(MqttSettings.from_url(up.url, insecure=bool(tls and tls.insecure)))
        out += [Finding(name, "warn", warning, fix) for warning, fix in unsafe]
        # the client certificate first: it can be checked with no network at all
        if tls is not None and tls.cert_file:
            try:
                cert = x509.load_pem_x509_certificate(Path(tls.cert_file).read_bytes())
            except (OSError, ValueError) as e:
                out.append(
                    Finding(
                        name,
                        "fail",
                        f"client certificate {tls.cert_file}: {e}",
                        "get the certificate signed from the CSR (sensegate provision --csr) and put it there",
                    )
                )
                continue
            left = cert.not_valid_after_utc.timestamp() - env.now()
            if left <= 0:
                out.append(
                    Finding(
                        name,
                        "fail",
                        f"client certificate {tls.cert_file} expired {_days(-left)} ago",
                        "renew it: sudo sensegate provision --csr, and have the CA sign the new CSR",
                    )
                )
                continue
            if left < env.expiry_warn_days * 86400:
                out.append(
                    Finding(
                        name,
                        "warn",
                        f"client certificate {tls.cert_file} expires in {_days(left)}",
                        "renew it soon: sudo sensegate provision --csr, and have the CA sign the new CSR",
                    )
                )
        sock, why, took = _tcp(host, port, env.connect_timeout)
        if sock is None:
            out.append(
                Finding(
                    name,
                    "fail",
                    why,
                    f"check the network (`ping {host}`), the firewall (TCP {port} outbound) and uplinks[].url",
                )
            )
            continue
        conn: socket.socket = sock
        expiry = ""
        missing = _tls_file_problem(up.tls) if tls_on else None
        if missing is not None:
            sock.close()
            out.append(Finding(name, "fail", missing.problem, missing.fix))
            continue
        try:
            if tls_on:
                ctx = ssl.create_default_context(cafile=(tls.ca_file if tls and tls.ca_file else None))
                if tls is not None and tls.insecure:
                    ctx.check_hostname = False
                if tls is not None and tls.cert_file:
                    ctx.load_cert_chain(tls.cert_file, tls.key_file)
                try:
                    conn = ctx.wrap_socket(sock, server_hostname=host)
                except ssl.SSLCertVerificationError as e:
                    sock.close()
                    out.append(_verify_failure(name, host, port, e, tls.ca_file if tls else "", env))
                    continue
                if isinstance(conn, ssl.SSLSocket) and conn.version() == "TLSv1.3":
                    _await_tls_alert(conn)  # TLS 1.3 refuses a client certificate after the handshake
                peer = conn.getpeercert() or {}
                not_after = peer.get("notAfter")
                if isinstance(not_after, str):
                    left = ssl.cert_time_to_seconds(not_after) - env.now()
                    expiry = f", certificate valid {_days(left)} more"
                    if left < env.expiry_warn_days * 86400:
                        out.append(
                            Finding(
                                name,
                                "warn",
                                f"the broker's certificate expires in {_days(left)}",
                                "tell the broker's operators; gateways cannot connect once it expires",
                            )
                        )
        except ssl.SSLError as e:
            out.append(
                Finding(
                    name,
                    "fail",
                    f"TLS with {host}:{port} failed: {e.reason or e}",
                    "if the broker wants a client certificate (mutual TLS): sensegate provision --csr, have it "
                    "signed, and set tls.cert_file / tls.key_file",
                )
            )
            continue
        except (OSError, ConnectionError) as e:
            out.append(
                Finding(name, "fail", f"{host}:{port}: {e}", "is this the broker's MQTT port? check uplinks[].url")
            )
            continue
        finally:
            conn.close()
        # the network and TLS are fine: now log in through the daemon's own MQTT client, with the
        # uplink's settings (protocol, credentials, certificates) and a client id of its own, so
        # a running daemon's session is not taken over
        try:
            settings = MqttSettings.for_uplink(up, gid, client_id=f"sensegate-doctor-{gid}"[:23])
        except OSError as e:
            out.append(Finding(name, "fail", f"password_file {up.password_file}: {e.strerror or e}",
                               "check uplinks[].password_file (readable by the service user)"))
            continue
        refused = _mqtt_login(settings, env.connect_timeout)
        if refused is not None and refused.refused:
            code = refused.refused
            out.append(
                Finding(
                    name,
                    "fail",
                    f"{host}:{port} {_CONNACK.get(code, f'refused the connection ({refused})')}",
                    "check username / password_file in the uplink, and the broker's ACL for this gateway",
                )
            )
            continue
        if refused is not None:
            fix = "is this the broker's MQTT port? check uplinks[].url"
            out.append(Finding(name, "fail", f"{host}:{port}: {refused}", fix))
            continue
        if not tls_on:
            if unsafe:  # not this machine: said above
                continue
            out.append(
                Finding(
                    name,
                    "warn",
                    f"{host}:{port} reachable in {took * 1000:.0f} ms but without TLS: batches are "
                    "signed but readable on the way",
                    "use mqtts:// with the broker's CA (sensegate provision --ca)",
                )
            )
            continue
        if len(out) == mark:
            ms = took * 1000
            out.append(Finding(name, "ok", f"{host}:{port} reachable over verified TLS in {ms:.0f} ms{expiry}"))
    return out


def _tls_file_problem(tls: Any) -> Any:
    """A TLS file the uplink names that is missing or unreadable (the TlsFileError), else None."""
    from gateway.mqtt import TlsFileError, check_tls_files

    if tls is None:
        return None
    try:
        check_tls_files(tls.ca_file, tls.cert_file, tls.key_file)
    except TlsFileError as e:
        return e
    return None


def _device_access_fix(path: str, st: os.stat_result, user: _User) -> str:
    """How the service user gets a device: join its group, unless that group is root or has no access."""
    group = _group_name(st.st_gid)
    if st.st_gid != 0 and st.st_mode & 0o060 == 0o060:
        return f"sudo usermod -aG {group} {user.name} && sudo systemctl restart sensegate"
    kernel = os.path.basename(os.path.realpath(path))
    wanted = next((g for prefix, g in DEVICE_GROUPS if kernel.startswith(prefix)), user.name)
    rule = f'KERNEL=="{kernel}", GROUP="{wanted}", MODE="0660"'
    join = "" if wanted == user.name else f" && sudo usermod -aG {wanted} {user.name}"
    return (f"never add the service user to group {group}; give the device a group of its own with a udev rule: "
            f"echo '{rule}' | sudo tee /etc/udev/rules.d/60-sensegate.rules && sudo udevadm control --reload && "
            f"sudo udevadm trigger{join} && sudo systemctl restart sensegate")


def check_ops_keys(cfg: GatewayConfig, config_path: Path) -> Finding:
    """The ops keys remote config trusts: every file named is there and is a public key."""
    from gateway.keys import KeyFileError, load_public_key

    fix = ("sudo sensegate provision --ops-key OPS.pub.pem: the public half of an ops key, which ops make on "
           "their machine with `sensegate keys init --ops` (a gateway never holds an ops private key)")
    problems: list[str] = []
    found = 0
    for entry in cfg.config.remote.ops_keys:
        p = Path(entry) if Path(entry).is_absolute() else config_path.parent / entry
        if p.is_dir() or (not p.exists() and not p.suffix):  # a folder of *.pem (none yet: remote config off)
            files = sorted(p.glob("*.pem")) if p.is_dir() else []
        elif not p.exists():
            problems.append(f"{p} (remote.ops_keys) does not exist")
            continue
        else:
            files = [p]
        for f in files:
            try:
                load_public_key(f)
                found += 1
            except KeyFileError as e:
                problems.append(f"{e} (an ops key's private half, or not a key?)")
    trusted, retired, unseen = _ops_keyring(cfg, config_path, found)
    if unseen:
        problems.append(unseen)
    done = f" ({retired})" if retired else ""
    if not problems:
        if not found:
            return Finding("remote config", "ok", "off: no ops key is trusted, so no config push or command is "
                           "accepted (to turn it on: sudo sensegate provision --ops-key OPS.pub.pem)")
        return Finding("remote config", "ok", f"on: {trusted} ops key(s) trusted{done}")
    state = f"on with {trusted} ops key(s){done}" if found else "OFF: no ops key could be loaded"
    return Finding("remote config", "warn" if found else "fail", f"{state}; " + "; ".join(problems), fix)


def _ops_keyring(cfg: GatewayConfig, config_path: Path, found: int) -> tuple[int, str, str]:
    """The ops keys trusted after the key events the agent took: (how many, which were retired
    and why, why the events could not be read here or "")."""
    from gateway.remote.envelope import OPS_EVENTS, gateway_ops_keys

    events = Path(cfg.config.gateway.state_dir) / "remote" / OPS_EVENTS
    try:
        events.stat()
    except FileNotFoundError:
        pass
    except OSError as e:
        return found, "", (f"the ops key events in {events} cannot be read here ({e.strerror or e}): a key rotated "
                           "or revoked since may be counted (run doctor as root)")
    ring = gateway_ops_keys(cfg.config.remote.ops_keys, config_path.parent, cfg.config.gateway.state_dir)
    retired = "; ".join(f"ops key {kid.hex()} was {why}" for kid, why in ring.gone.items())
    return len(ring), retired, ""


def _verify_failure(
    name: str, host: str, port: int, e: ssl.SSLCertVerificationError, ca: str, env: Environment
) -> Finding:
    reason = e.verify_message or str(e)
    detail = ""
    with contextlib.suppress(Exception):
        cert = _peer_cert_unverified(host, port, env.connect_timeout)
        if cert is not None:
            left = cert.not_valid_after_utc.timestamp() - env.now()
            detail = f" (certificate of {cert.subject.rfc4514_string()}, issued by {cert.issuer.rfc4514_string()}"
            detail += f", {'expired ' + _days(-left) + ' ago' if left < 0 else 'valid ' + _days(left) + ' more'})"
    if "not yet valid" in reason or "expired" in reason:
        fix = _certificate_time_fix(reason, env)
    elif "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
        fix = "use the host name the certificate was made for in uplinks[].url"
    else:
        fix = "install the CA that signed the broker's certificate: sudo sensegate provision --ca BROKER-CA.pem"
        if ca:
            fix += f" (now using {ca})"
    return Finding(name, "fail", f"TLS verification of {host}:{port} failed: {reason}{detail}", fix)


def _certificate_time_fix(reason: str, env: Environment) -> str:
    """A certificate outside its validity: the clock is the first suspect when it reads a wrong date."""
    now = env.now()
    if now < CLOCK_FLOOR or now > CLOCK_CEILING or ("not yet valid" in reason):
        return (f"the gateway's clock reads {_date(now)}: set the clock first (NTP: `timedatectl timesync-status`; "
                "see the clock check), then run doctor again; the CA is not the problem")
    return "the broker's certificate must be renewed by its operators (or the gateway's clock is wrong)"


def check_first_boot(env: Environment) -> Finding | None:
    """A first-boot provisioning that could not use what it was given (sensegate-firstboot)."""
    marker = env.state_dir / "firstboot.failed"
    try:
        why = marker.read_text().strip()
    except OSError:
        return None
    return Finding(
        "first boot",
        "fail",
        f"first-boot provisioning failed: {why}",
        "fix the files in sensegate/ on the boot partition (provision-report.txt there says more) and reboot, "
        "or provision by hand: sudo sensegate provision --id <GATEWAY-ID> ...",
    )


def check_backlog(cfg: GatewayConfig, env: Environment) -> Finding:
    """Readings waiting in the buffer, and how old the oldest is."""
    from gateway.pipeline import buffer_path

    if all(u.type == "jsonl" for u in cfg.config.uplinks):
        return Finding("buffer", "ok", "no durable buffer in this config (jsonl uplinks only)")
    db = buffer_path(cfg)
    if not db.exists():
        return Finding("buffer", "ok", f"{db} not created yet (the daemon has not run)")
    try:
        from gateway.store import backlog

        waiting, age = backlog(db)
    except ImportError as e:
        return Finding("buffer", "warn", f"cannot inspect ({e})", "update sensegate")
    except Exception as e:  # sqlite3.Error and friends: never let doctor crash on a bad file
        from gateway.store import salvage

        if salvage.is_corrupt(e):
            return Finding("buffer", "warn", f"cannot inspect {db}: SQLite says it is corrupt ({e})",
                           "restart sensegate: it sets the file aside, recovers what it can read and declares "
                           "the rest lost (then see this check again)")
        why = salvage.describe(e, db)
        fix = f"ls -l {db}*; journalctl -u sensegate"
        if why.kind == "full":
            fix = ("free space on that disk (`sudo journalctl --vacuum-size=50M`, old logs, images): the daemon "
                   "keeps readings in memory meanwhile and stores and sends them once there is room")
        return Finding("buffer", "warn", f"cannot inspect {db}: {why}", fix)
    if not waiting:
        return Finding("buffer", "ok", "empty: everything was delivered")
    a = age or 0.0
    text = f"{waiting} reading(s) waiting, the oldest {_days(a) if a > 7200 else f'{a:.0f} s'} old"
    if age is not None and age > env.backlog_warn_age:
        return Finding(
            "buffer",
            "warn",
            text + ": the uplink is not delivering",
            "see the broker check above; `journalctl -u sensegate` says why batches are not acknowledged",
        )
    return Finding("buffer", "ok", text)


def check_set_aside(cfg: GatewayConfig, env: Environment) -> list[Finding]:
    """Buffer files set aside as corrupt: when, why, what they held and what became of it."""
    from gateway.pipeline import buffer_path
    from gateway.store import salvage

    db = buffer_path(cfg)
    out = []
    for aside in sorted(db.parent.glob(f"{db.name}.corrupt-*")) if db.parent.is_dir() else []:
        if aside.name.endswith(("-wal", "-shm")):
            continue
        try:
            rep = json.loads(salvage.report_path(aside).read_text())
        except (OSError, ValueError):
            rep = None
        fix = (f"nothing to redo for the data; check the storage (`dmesg`: a failing SD card corrupts files), "
               f"keep the file for a post-mortem or delete it: sudo rm {aside}*")
        if not isinstance(rep, dict):
            out.append(Finding("buffer", "warn", f"{aside} was set aside as corrupt by an earlier sensegate; "
                               "what it held was not recovered", fix))
            continue
        lost = rep.get("lost") or []
        ranges = ", ".join(f"{a}-{b}" for a, b in lost[:5]) + (" ..." if len(lost) > 5 else "")
        held = int(rep.get("recovered_readings", 0)) + int(rep.get("lost_readings", 0))
        if rep.get("stream") == "kept":
            what = (f"it held {held} reading(s) not yet delivered: {rep.get('recovered_readings', 0)} recovered and "
                    f"sent, {rep.get('lost_readings', 0)} unreadable and declared lost"
                    + (f" (reading numbers {ranges})" if lost else ""))
        elif rep.get("stream") == "new":
            what = (f"its reading numbers were unreadable: {rep.get('recovered_readings', 0)} reading(s) recovered "
                    "and sent in a new stream; how many more it held cannot be told")
        else:
            what = "it belonged to another gateway; nothing was taken from it"
        out.append(Finding("buffer", "warn", f"{aside} was set aside on {rep.get('set_aside_at', '?')} because "
                           f"SQLite found it corrupt ({rep.get('error', '?')}); {what}", fix))
    return out


# -- running them -------------------------------------------------------------------------------


def salvage_config(path: Path) -> tuple[GatewayConfig | None, list[str]]:
    """An invalid config with its invalid parts left out (and which), so every other check still runs."""
    from gateway.config.loader import Document
    from gateway.config.validate import read_config, validate_document
    from gateway.registry import Registry

    registry = Registry.discover()
    left_out: list[str] = []
    try:
        doc = read_config(path)
    except ConfigInvalid as e:  # a file that does not parse: the others without it
        bad = {Path(p.file) for p in e.problems if p.file}
        if not bad:
            return None, []
        try:
            doc = read_config(path, replace=dict.fromkeys(bad, b""))
        except ConfigInvalid:
            return None, []
        left_out += sorted(f.name for f in bad)
    if not isinstance(doc.data, dict):
        return None, []

    def problems(data: dict[str, Any]) -> tuple[int, GatewayConfig | None]:
        try:
            return 0, validate_document(Document(data, doc.positions, doc.sources), registry, str(path), True)
        except ConfigInvalid as e:
            return max(1, len(e.problems)), None

    current = dict(doc.data)
    n, cfg = problems(current)
    for key in [k for k in current if k != "gateway"]:
        if cfg is not None:
            break
        without = {k: v for k, v in current.items() if k != key}
        m, c = problems(without)
        if m < n:
            current, n, cfg = without, m, c
            left_out.append(key)
    drivers = doc.data.get("drivers")
    if cfg is not None and "drivers" in left_out and isinstance(drivers, list):
        good = [d for d in drivers if problems({**current, "drivers": [d]})[0] == 0]
        n, kept = problems({**current, "drivers": good})
        if kept is not None and good:
            cfg = kept
            left_out[left_out.index("drivers")] = f"{len(drivers) - len(good)} of {len(drivers)} driver sections"
    return cfg, left_out


def run_checks(config_path: str | Path, env: Environment | None = None) -> list[Finding]:
    """Every check, in the order a technician would fix things; an invalid config hides none of the others."""
    from gateway import doctor_agent as agent

    env = env or Environment()
    first, valid = check_config(Path(config_path))
    cfg = valid
    if valid is None and Path(config_path).exists():
        cfg, left_out = salvage_config(Path(config_path))
        if cfg is not None:
            first = Finding(first.check, first.status, f"{first.message}\n(the checks below ran without the invalid "
                            f"part{'s' if len(left_out) != 1 else ''}: {', '.join(left_out)})", first.fix)
    findings = [first]
    boot = check_first_boot(env)
    if boot is not None:
        findings.append(boot)
    view = agent.look(cfg, env.unit, env.agent, env.connect_timeout) if env.look_at_agent else None
    if view is not None:
        findings.append(agent.check_running(view, _waiting(cfg), env.now()))
        for found in (agent.check_running_config(view, valid, str(config_path)), agent.check_drivers_down(view)):
            if found is not None:
                findings.append(found)
    if cfg is not None:
        findings.append(check_identity(cfg))
        findings += check_token_key(cfg, env) if cfg.config.gateway.key_file.startswith("pkcs11:") \
            else [check_key(cfg, env)]
        findings.append(check_ops_keys(cfg, Path(config_path)))
        findings += check_devices(cfg, env)
        ble = check_bluetooth(cfg, env)
        if ble is not None:
            findings.append(ble)
        findings += check_network_sources(cfg, env)
    findings.append(check_clock(env))
    if cfg is not None:
        findings.append(check_disk(cfg, env))
        findings += check_broker(cfg, env)
        findings.append(check_backlog(cfg, env))
        findings += check_set_aside(cfg, env)
    delivery = agent.check_delivery(view, env.backlog_warn_age) if view is not None else None
    if delivery is not None:
        findings.append(delivery)
    return findings


def _waiting(cfg: GatewayConfig | None) -> int:
    """Readings waiting in the buffer file (0 when there is none or it cannot be read)."""
    if cfg is None or all(u.type == "jsonl" for u in cfg.config.uplinks):
        return 0
    from gateway.pipeline import buffer_path

    db = buffer_path(cfg)
    if not db.exists():
        return 0
    try:
        from gateway.store import backlog

        return backlog(db)[0]
    except Exception:  # check_backlog reports an unreadable buffer
        return 0


def worst(findings: list[Finding]) -> Status:
    """The overall verdict."""
    statuses = {f.status for f in findings}
    return "fail" if "fail" in statuses else "warn" if "warn" in statuses else "ok"


def report(findings: list[Finding], source: str) -> str:
    """The human-readable report."""
    tag = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]"}
    lines = [f"sensegate doctor: {source}"]
    for f in findings:
        first, *rest = f.message.splitlines() or [""]
        lines.append(f"{tag[f.status]} {f.check}: {first}")
        lines += [f"       {r}" for r in rest]
        if f.fix and f.status != "ok":
            lines.append(f"       fix: {f.fix}")
    counts = {s: sum(1 for f in findings if f.status == s) for s in ("ok", "warn", "fail")}
    verdict = {"ok": "all good", "warn": "working, with warnings", "fail": "NOT working"}[worst(findings)]
    lines.append(f"{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failure(s): {verdict}")
    return "\n".join(lines)


def as_json(findings: list[Finding]) -> str:
    """Machine-readable findings."""
    return json.dumps({"status": worst(findings), "findings": [asdict(f) for f in findings]}, indent=2)
