"""`sensegate doctor`: each failure it detects, made real where the machine allows (missing and
forbidden devices, a pty, a fake sysfs tree, refused ports, mosquitto with good, wrong, expiring,
expired and misnamed certificates, bad passwords, a real buffer left behind by the daemon), and
simulated only for the clock, which a test cannot desynchronise."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import ipaddress
import json
import os
import pwd
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway import __version__
from gateway.clock import ClockState, kernel_clock
from gateway.config import GatewayConfig, load_config_bytes
from gateway.doctor import (
    Environment,
    Finding,
    check_backlog,
    check_bluetooth,
    check_broker,
    check_clock,
    check_devices,
    check_disk,
    check_key,
    check_network_sources,
    report,
    run_checks,
    worst,
)
from gateway.keys import init_key
from gateway.registry import Registry
from gateway.testing import free_port
from hil.mosquitto import Mosquitto

ROOT = Path(__file__).parents[2]
SYNCED = ClockState(True, 0.01)


@pytest.fixture
def probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """Install tests/fixtures/sgprobe as a driver distribution (entry point `probe`)."""
    info = tmp_path / "site" / "sgprobe-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sgprobe\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text("[sensegate.drivers]\nprobe = sgprobe:PROBE\n")
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "fixtures" / "sgprobe"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    return Registry.discover()


def env(**kw: Any) -> Environment:
    kw.setdefault("service_user", "root")
    kw.setdefault("clock", lambda: SYNCED)
    kw.setdefault("keeps_time", lambda: True)
    kw.setdefault("connect_timeout", 2.0)
    kw.setdefault("unit", lambda: None)  # no systemd on a test machine: the agent is asked itself
    return Environment(**kw)


def config(tmp: Path, registry: Registry | None = None, key: bool = True, **sections: Any) -> GatewayConfig:
    state = tmp / "state"
    if key and not (state / "keys" / "device.key").exists():
        init_key(state / "keys")
    state.mkdir(exist_ok=True)
    doc: dict[str, Any] = {"gateway": {"id": "gw-doc", "state_dir": str(state)}}
    doc.update(sections)
    return load_config_bytes(yaml.safe_dump(doc).encode(), registry or Registry.discover(), "t.yaml")


def only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, findings
    return findings[0]


# -- config, identity, key ---------------------------------------------------------------------


def test_invalid_and_missing_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {id: gw-1}\nbuffer: {max_bytes: lots}\n")
    f = run_checks(bad, env())
    assert f[0].status == "fail" and "t.yaml" not in f[0].message and "bad.yaml:2" in f[0].message
    assert "sensegate check" in f[0].fix
    # the rest is checked without the invalid part (state and key at their defaults here)
    assert "ran without the invalid part: buffer" in f[0].message
    assert [x.check for x in f][:4] == ["config", "agent", "identity", "signing key"]
    assert "clock" in [x.check for x in f] and "disk" in [x.check for x in f]
    missing = run_checks(tmp_path / "nope.yaml", env())
    assert missing[0].status == "fail" and "does not exist" in missing[0].message
    assert "provision" in missing[0].fix


def test_placeholder_identity_fails(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    init_key(tmp_path / "keys")
    path.write_text(
        f"gateway: {{id: CHANGE-ME, state_dir: {tmp_path}, key_file: {tmp_path}/keys/device.key}}\n"
        f"uplinks: [{{type: jsonl, path: {tmp_path}/o.jsonl}}]\n"
    )
    findings = {f.check: f for f in run_checks(path, env())}
    assert findings["identity"].status == "fail" and "provision --id" in findings["identity"].fix
    assert findings["signing key"].status == "ok"


def test_key_missing_open_wrong_alg_or_wrong_owner(tmp_path: Path) -> None:
    cfg = config(tmp_path, key=False)
    f = check_key(cfg, env())
    assert f.status == "fail" and "no signing key" in f.message and "provision" in f.fix

    info = init_key(tmp_path / "state" / "keys")
    assert check_key(cfg, env()).status == "ok"
    info.private_path.chmod(0o644)
    f = check_key(cfg, env())
    assert f.status == "fail" and "readable by others" in f.message and f.fix == f"sudo chmod 600 {info.private_path}"
    info.private_path.chmod(0o600)

    es = config(tmp_path, batch={"alg": "es256"})
    f = check_key(es, env())
    assert f.status == "fail" and "ed25519 key but batch.alg is es256" in f.message

    if os.geteuid() == 0:  # the key belongs to root, the service runs as nobody
        f = check_key(cfg, env(service_user="nobody"))
        assert f.status == "fail" and "the service runs as nobody" in f.message
        assert f.fix.startswith("sudo chown -R nobody:")


# -- devices -----------------------------------------------------------------------------------


@pytest.fixture
def pty() -> Iterator[str]:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    yield path
    os.close(master)
    os.close(slave)


def test_device_missing_forbidden_present_and_not_a_device(tmp_path: Path, probe: Registry, pty: str) -> None:
    odd = Path("/dev/shm") / f"sensegate-doctor-{os.getpid()}"
    odd.write_text("a regular file")
    try:
        cfg = config(
            tmp_path,
            probe,
            drivers=[
                {"driver": "probe", "name": "gone", "port": "/dev/ttyNOPE-sensegate"},
                {"driver": "probe", "name": "here", "device": pty, "bus": {"device": pty}},
                {"driver": "probe", "name": "odd", "device": str(odd)},
                {"driver": "probe", "name": "cam", "url": "http://127.0.0.1:9/x", "device": "/dev/nope"},
                {"driver": "probe", "name": "tcp", "port": "502"},
            ],
        )
        by = {(f.status, f.message.split(":")[0]): f for f in check_devices(cfg, env())}
    finally:
        odd.unlink()
    assert ("fail", "gone") in by and "does not exist" in by[("fail", "gone")].message
    assert "/dev/serial/by-id" in by[("fail", "gone")].fix
    assert ("warn", "odd") in by and "not a character device" in by[("warn", "odd")].message
    oks = [f for f in check_devices(cfg, env()) if f.status == "ok"]
    assert len(oks) == 2 and all(pty in f.message for f in oks)  # device and bus.device
    assert not any("cam" in f.message for f in check_devices(cfg, env()))  # a url source: device unused


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to judge another user's access to a root-owned pty")
def test_device_the_service_user_may_not_open(tmp_path: Path, probe: Registry, pty: str) -> None:
    os.chown(pty, 0, __import__("grp").getgrnam("tty").gr_gid)
    os.chmod(pty, 0o660)  # owner root, group tty: like a serial port in group dialout
    cfg = config(tmp_path, probe, drivers=[{"driver": "probe", "port": pty}])
    f = only(check_devices(cfg, env(service_user="nobody")))
    group = __import__("grp").getgrgid(os.stat(pty).st_gid).gr_name
    assert f.status == "fail" and "nobody may not read and write it" in f.message
    assert f.fix == f"sudo usermod -aG {group} nobody && sudo systemctl restart sensegate"
    os.chmod(pty, 0o666)
    assert only(check_devices(cfg, env(service_user="nobody"))).status == "ok"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a device node to root:root")
def test_a_root_only_device_gets_a_udev_rule_not_the_root_group(tmp_path: Path, probe: Registry, pty: str) -> None:
    """A node left 0600 root:root: joining group root would be the wrong fix (and a dangerous one)."""
    os.chown(pty, 0, 0)
    os.chmod(pty, 0o600)
    cfg = config(tmp_path, probe, drivers=[{"driver": "probe", "port": pty}])
    f = only(check_devices(cfg, env(service_user="nobody")))
    assert f.status == "fail" and "group root" in f.message and "mode 0600" in f.message
    assert "usermod -aG root" not in f.fix and "never add the service user to group root" in f.fix
    kernel = os.path.basename(pty)
    assert f"KERNEL==\"{kernel}\", GROUP=\"nobody\", MODE=\"0660\"" in f.fix
    assert "/etc/udev/rules.d/60-sensegate.rules" in f.fix and "udevadm trigger" in f.fix
    # a serial port's name gets the serial group, and the user joins it
    from gateway.doctor import _device_access_fix, _user

    st = os.stat(pty)
    fix = _device_access_fix("/dev/ttyUSB0", st, _user("nobody"))
    assert 'KERNEL=="ttyUSB0", GROUP="dialout", MODE="0660"' in fix and "usermod -aG dialout nobody" in fix


# -- bluetooth, cameras ------------------------------------------------------------------------


def test_bluetooth_missing_blocked_and_present(tmp_path: Path, probe: Registry) -> None:
    sysfs = tmp_path / "sys-class-bluetooth"
    sysfs.mkdir()
    cfg = config(tmp_path, probe, drivers=[{"driver": "probe", "name": "tags"}])
    e = env(bluetooth_sysfs=sysfs, bluetooth_drivers=frozenset({"probe"}))
    f = check_bluetooth(cfg, e)
    assert f is not None and f.status == "fail" and "no Bluetooth adapter" in f.message and "tags" in f.message
    rf = sysfs / "hci0" / "rfkill0"
    rf.mkdir(parents=True)
    (rf / "hard").write_text("0\n")
    (rf / "soft").write_text("1\n")
    f = check_bluetooth(cfg, e)
    assert f is not None and f.status == "fail" and f.fix == "sudo rfkill unblock bluetooth"
    (rf / "hard").write_text("1\n")
    f = check_bluetooth(cfg, e)
    assert f is not None and f.status == "fail" and "hardware" in f.message
    (rf / "hard").write_text("0\n")
    (rf / "soft").write_text("0\n")
    f = check_bluetooth(cfg, e)
    assert f is not None and f.status == "ok" and "hci0" in f.message
    assert check_bluetooth(cfg, env(bluetooth_sysfs=sysfs)) is None  # no BLE driver configured


def test_camera_unreachable_and_reachable(tmp_path: Path, probe: Registry) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    dead = free_port()
    try:
        cfg = config(
            tmp_path,
            probe,
            drivers=[
                {"driver": "probe", "name": "up", "url": f"rtsp://127.0.0.1:{port}/stream"},
                {"driver": "probe", "name": "down", "url": f"http://127.0.0.1:{dead}/snap.jpg"},
            ],
        )
        up, down = check_network_sources(cfg, env())
    finally:
        server.close()
    assert up.status == "ok" and f"127.0.0.1:{port} reachable" in up.message
    assert down.status == "fail" and "down: cannot connect" in down.message and "curl" in down.fix


# -- clock ---------------------------------------------------------------------------------------


def test_clock() -> None:
    assert check_clock(env()).status == "ok"
    f = check_clock(env(clock=lambda: ClockState(False)))
    assert f.status == "fail" and "not synchronised" in f.message and "timedatectl" in f.fix
    f = check_clock(env(now=lambda: 86400.0 * 365))  # 1971: a Pi that lost power, no NTP yet
    assert f.status == "fail" and "1971-01-01" in f.message
    y2038 = dt.datetime(2038, 3, 1, tzinfo=dt.UTC).timestamp()  # a bad RTC; NTP may even claim sync
    f = check_clock(env(now=lambda: y2038))
    assert f.status == "fail" and "2038-03-01" in f.message and "cannot be right (years ahead)" in f.message
    assert "expired" in f.message and "set-time" in f.fix
    # a container, chroot or test bench: the host keeps the time and its NTP state may be hidden
    f = check_clock(env(clock=lambda: ClockState(False), keeps_time=lambda: False))
    assert f.status == "warn" and "cannot be seen here" in f.message and "host" in f.fix
    f = check_clock(env(clock=lambda: ClockState(False), keeps_time=lambda: False, now=lambda: y2038))
    assert f.status == "fail"  # a wrong date is wrong anywhere

    def broken() -> ClockState:
        raise OSError(1, "Operation not permitted")

    assert check_clock(env(clock=broken)).status == "warn"
    assert Environment().clock is kernel_clock  # the clock module's reader (tests/gateway/test_clock.py)


# -- disk ----------------------------------------------------------------------------------------


def test_disk_missing_dir_and_bound_beyond_free_space(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert check_disk(cfg, env()).status == "ok"
    gone = config(tmp_path, gateway={"id": "gw-doc", "state_dir": str(tmp_path / "nowhere")})
    f = check_disk(gone, env())
    assert f.status == "fail" and "does not exist" in f.message and f.fix.startswith("sudo install -d")
    huge = config(tmp_path, buffer={"max_bytes": 2**60})
    f = check_disk(huge, env())
    assert f.status == "warn" and "may grow to" in f.message and "lower buffer.max_bytes" in f.fix


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tiny tmpfs")
def test_disk_almost_full(tmp_path: Path) -> None:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("mount is not permitted in this container")
    try:
        cfg = config(tmp_path, gateway={"id": "gw-doc", "state_dir": str(mnt)})
        f = check_disk(cfg, env())
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert f.status == "fail" and "free for the buffer" in f.message


# -- broker ------------------------------------------------------------------------------------


def _cert(
    d: Path,
    name: str,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Name] | None,
    days: float = 365,
    san: str = "127.0.0.1",
    start: float = -400,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Name, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[1] if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=start))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    if issuer is None:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    else:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(san)) if san[0].isdigit() else x509.DNSName(san)
        b = b.add_extension(x509.SubjectAlternativeName([alt]), critical=False)
    cert = b.sign(issuer[0] if issuer else key, hashes.SHA256())
    kp, cp = d / f"{name}.key", d / f"{name}.crt"
    kp.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    kp.chmod(0o600)
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, subject, kp, cp


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    d = tmp_path / "pki"
    d.mkdir()
    ca_key, ca_name, _, ca = _cert(d, "ca", None, days=3650)
    *_, other_ca = _cert(d, "other-ca", None, days=3650)
    out: dict[str, Any] = {"ca": ca, "other_ca": other_ca, "dir": d}
    for label, days, san in [
        ("good", 365, "127.0.0.1"),
        ("soon", 10, "127.0.0.1"),
        ("expired", -3, "127.0.0.1"),
        ("misnamed", 365, "broker.example.net"),
    ]:
        _, _, k, c = _cert(d, label, (ca_key, ca_name), days=days, san=san)
        out[label] = (c, k)
    # valid from three years on: what a gateway whose clock is years behind sees
    _, _, k, c = _cert(d, "future", (ca_key, ca_name), days=3 * 365 + 365, start=3 * 365)
    out["future"] = (c, k)
    _, _, k, c = _cert(d, "client-old", (ca_key, ca_name), days=-1)
    out["client_expired"] = (c, k)
    _, _, k, c = _cert(d, "client", (ca_key, ca_name), days=365)
    out["client"] = (c, k)
    return out


def _broker(tmp: Path, pki: dict[str, Any], which: str, **kw: Any) -> Mosquitto:
    cert, key = pki[which]
    tls = {"cafile": str(pki["ca"]), "certfile": str(cert), "keyfile": str(key), **kw}
    m = Mosquitto(tmp / f"mq-{which}-{len(kw)}", tls=tls, persistence=False)
    m.start()
    return m


def _uplink(url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "mqtt", "url": url, **extra}


def test_broker_plain_refused_and_bad_password(tmp_path: Path) -> None:
    dead = free_port()
    cfg = config(tmp_path, uplinks=[_uplink(f"mqtt://127.0.0.1:{dead}")])
    f = only(check_broker(cfg, env()))
    assert f.status == "fail" and "cannot connect" in f.message and f"TCP {dead}" in f.fix
    cfg = config(tmp_path, uplinks=[_uplink("mqtt://no-such-host.invalid:1883")])
    plain, unreachable = check_broker(cfg, env())  # said from the config alone, reachable or not
    assert plain.status == "warn" and "plain mqtt:// to no-such-host.invalid:1883, which is not this machine" \
        in plain.message and "mqtts://" in plain.fix
    assert unreachable.status == "fail" and "cannot resolve" in unreachable.message

    with Mosquitto(tmp_path / "plain", persistence=False) as m:
        f = only(check_broker(config(tmp_path, uplinks=[_uplink(m.url)]), env()))
    assert f.status == "warn" and "without TLS" in f.message

    with Mosquitto(tmp_path / "pw", persistence=False, passwords={"gw": "right"}) as m:
        pwfile = tmp_path / "pw.txt"
        pwfile.write_text("wrong\n")
        bad = config(tmp_path, uplinks=[_uplink(m.url, username="gw", password_file=str(pwfile))])
        f = only(check_broker(bad, env()))
        assert f.status == "fail" and "not authorised (wrong user name or password" in f.message
        good = config(tmp_path, uplinks=[_uplink(m.url, username="gw", password="right")])
        assert only(check_broker(good, env())).status == "warn"  # accepted, still plain


def test_broker_tls_good_wrong_ca_expiring_expired_misnamed(tmp_path: Path, pki: dict[str, Any]) -> None:
    def check(which: str, ca: Path, **tls: Any) -> list[Finding]:
        m = _broker(tmp_path, pki, which)
        try:
            url = f"mqtts://127.0.0.1:{m.port}"
            return check_broker(config(tmp_path, uplinks=[_uplink(url, tls={"ca_file": str(ca), **tls})]), env())
        finally:
            m.stop()

    f = only(check("good", pki["ca"]))
    assert f.status == "ok" and "verified TLS" in f.message and "valid 365 days more" in f.message

    f = only(check("good", pki["other_ca"]))
    assert f.status == "fail" and "TLS verification of 127.0.0.1" in f.message
    assert "certificate" in f.message.split("failed: ")[1]  # OpenSSL's own words (chain/issuer)
    assert "provision --ca" in f.fix and "issued by CN=ca" in f.message

    soon = check("soon", pki["ca"])
    assert [x.status for x in soon] == ["warn"] and "expires in 10 days" in soon[0].message

    f = only(check("expired", pki["ca"]))
    assert f.status == "fail" and "certificate has expired" in f.message and "expired 3 days ago" in f.message

    f = only(check("future", pki["ca"]))  # the clock is years behind the certificate
    assert f.status == "fail" and "not yet valid" in f.message
    assert "set the clock first" in f.fix and "provision --ca" not in f.fix and "the CA is not the problem" in f.fix

    # a CA file that is not there: named, with the command that installs it (not "is this the MQTT port?")
    f = only(check("good", tmp_path / "nowhere" / "broker-ca.pem"))
    assert f.status == "fail" and f"broker's CA file {tmp_path}/nowhere/broker-ca.pem does not exist" in f.message
    assert f.fix.endswith("sudo sensegate provision --ca BROKER-CA.pem") and "port" not in f.fix

    f = only(check("misnamed", pki["ca"]))
    assert f.status == "fail" and "mismatch" in f.message.lower() and "host name" in f.fix
    f = only(check("misnamed", pki["ca"], insecure=True))  # connects, but anyone the CA signed could pose as it
    assert f.status == "warn" and "tls.insecure is set for 127.0.0.1" in f.message and "host name" in f.fix


def test_broker_mutual_tls(tmp_path: Path, pki: dict[str, Any]) -> None:
    m = _broker(tmp_path, pki, "good", require_certificate="true")
    try:
        url = f"mqtts://127.0.0.1:{m.port}"
        no_cert = config(tmp_path, uplinks=[_uplink(url, tls={"ca_file": str(pki["ca"])})])
        f = only(check_broker(no_cert, env()))
        assert f.status == "fail" and "mutual TLS" in f.fix

        cert, key = pki["client"]
        ok = config(
            tmp_path,
            uplinks=[_uplink(url, tls={"ca_file": str(pki["ca"]), "cert_file": str(cert), "key_file": str(key)})],
        )
        assert only(check_broker(ok, env())).status == "ok"

        cert, key = pki["client_expired"]
        old = config(
            tmp_path,
            uplinks=[_uplink(url, tls={"ca_file": str(pki["ca"]), "cert_file": str(cert), "key_file": str(key)})],
        )
        f = only(check_broker(old, env()))
        assert f.status == "fail" and "client certificate" in f.message and "expired" in f.message
    finally:
        m.stop()


# -- buffer backlog ----------------------------------------------------------------------------


def test_backlog_real_buffer(tmp_path: Path) -> None:
    """The daemon buffers readings it cannot deliver; doctor reports them from the file it left."""
    from gateway.daemon import Daemon

    dead = free_port()
    cfg = config(tmp_path, uplinks=[_uplink(f"mqtt://127.0.0.1:{dead}", reconnect_max=1)])
    assert check_backlog(cfg, env()).message.endswith("not created yet (the daemon has not run)")
    path = tmp_path / "gw.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "gateway": {"id": "gw-doc", "state_dir": str(tmp_path / "state")},
                "uplinks": [_uplink(f"mqtt://127.0.0.1:{dead}", reconnect_max=1)],
                "drivers": [{"driver": "sim", "interval": "20ms", "points": [{"name": "n", "pattern": "counter"}]}],
            }
        )
    )

    def buffered(d: Daemon) -> int:
        stats = getattr(d.pipeline, "stats", None)
        return int(stats()["buffer"]["readings"]) if stats else 0

    async def fill() -> None:
        d = Daemon(path)
        task = asyncio.create_task(d.run())
        async with asyncio.timeout(30):
            while not buffered(d):  # noqa: ASYNC110 -- polling with an overall timeout
                await asyncio.sleep(0.05)
        d.request_stop()
        await task

    asyncio.run(fill())
    f = check_backlog(cfg, env())
    assert f.status == "ok" and "reading(s) waiting" in f.message
    f = check_backlog(cfg, env(backlog_warn_age=0.0))
    assert f.status == "warn" and "not delivering" in f.message

    db = tmp_path / "state" / "buffer.db"
    for p in db.parent.glob("buffer.db*"):
        p.unlink()
    db.write_bytes(b"this is not a database" * 100)
    f = check_backlog(cfg, env())
    assert f.status == "warn" and "cannot inspect" in f.message

    jsonl = config(tmp_path, uplinks=[{"type": "jsonl"}])
    assert "no durable buffer" in check_backlog(jsonl, env()).message


# -- the whole run, and the command --------------------------------------------------------------


def test_worst_and_report() -> None:
    f = [Finding("a", "ok", "fine"), Finding("b", "warn", "hmm", "do x"), Finding("c", "fail", "two\nlines", "do y")]
    assert worst(f) == "fail" and worst(f[:2]) == "warn" and worst(f[:1]) == "ok"
    text = report(f, "/etc/x.yaml")
    assert "[ ok ] a: fine" in text and "[warn] b: hmm\n       fix: do x" in text
    assert "[FAIL] c: two\n       lines\n       fix: do y" in text
    assert text.endswith("1 ok, 1 warning(s), 1 failure(s): NOT working")


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    init_key(tmp_path / "keys")
    path = tmp_path / "gw.yaml"
    path.write_text(
        f"gateway: {{id: gw-cli, state_dir: {tmp_path}, key_file: {tmp_path}/keys/device.key}}\n"
        f"uplinks: [{{type: jsonl, path: {tmp_path}/o.jsonl}}]\n"
    )
    user = pwd.getpwuid(os.geteuid()).pw_name
    cmd = [sys.executable, "-m", "gateway", "doctor", "-c", str(path), "--user", user]
    res = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60)
    doc = json.loads(res.stdout)
    clock = next(f for f in doc["findings"] if f["check"] == "clock")
    agent = next(f for f in doc["findings"] if f["check"] == "agent")
    # no systemd here and no metrics endpoint in this config: doctor cannot tell, and says so
    assert agent["status"] == "warn" and "cannot tell whether the agent runs" in agent["message"]
    # everything else is fine here; the clock is whatever this machine's is
    assert {f["status"] for f in doc["findings"] if f["check"] not in ("clock", "agent")} == {"ok"}
    worst_of = {"ok": 0, "warn": 1, "fail": 2}
    assert res.returncode == max(worst_of[clock["status"]], 1) == worst_of[doc["status"]]
    path.write_text("gateway: {id: 'bad id!'}\n")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "[FAIL] config: invalid:" in res.stdout


def test_a_failed_first_boot_is_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "sensegate.yaml"
    cfg.write_text("gateway: {id: gw-fb}\n")
    (tmp_path / "firstboot.failed").write_text("ops.pem on the boot partition is not used\n")
    findings = run_checks(cfg, env(state_dir=tmp_path))
    boot = next(f for f in findings if f.check == "first boot")
    assert boot.status == "fail" and "ops.pem on the boot partition is not used" in boot.message
    assert "boot partition" in boot.fix
    assert not any(f.check == "first boot" for f in run_checks(cfg, env(state_dir=tmp_path / "none")))


# -- the running agent ---------------------------------------------------------------------------


def _agent_doc(tmp: Path, url: str, metrics_port: int, drivers: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "gateway": {"id": "gw-live", "state_dir": str(tmp / "state")},
        "uplinks": [_uplink(url, reconnect_max=1)],
        "metrics": {"enabled": True, "listen": f"127.0.0.1:{metrics_port}"},
        "drivers": drivers,
        **extra,
    }


SIM_DRIVER = {"driver": "sim", "name": "counter", "interval": "50ms", "points": [{"name": "n", "pattern": "counter"}]}


def by_check(findings: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in findings}


async def test_doctor_asks_the_running_agent(tmp_path: Path, broker: Mosquitto) -> None:
    """Running since when, the local file it runs, a driver down with its reason, delivery acknowledged."""
    from tests.gateway.helpers import running_daemon, until

    init_key(tmp_path / "state" / "keys")
    refused = free_port()
    path = tmp_path / "gw.yaml"
    down = {"driver": "example", "name": "thermo", "port": refused, "interval": "1s"}
    path.write_text(yaml.safe_dump(_agent_doc(tmp_path, broker.url, free_port(), [SIM_DRIVER, down])))
    async with running_daemon(path) as d:
        await until(lambda: d.pipeline.stats()["batches"]["acked"] > 0, 20)
        await until(lambda: d.supervisor.runners["thermo"].stats.last_error, 20)
        f = by_check(await asyncio.to_thread(run_checks, path, env()))
    assert f["agent"].status == "ok" and f["agent"].message.startswith("running since ")
    assert f"version {__version__}" in f["agent"].message
    assert f["running config"].status == "ok" and str(path) in f["running config"].message
    assert "2 driver instance(s): counter, thermo" in f["running config"].message
    assert f["drivers"].status == "warn" and "1 of 2 instance(s) down" in f["drivers"].message
    assert "thermo (example): " in f["drivers"].message
    assert f"cannot connect to 127.0.0.1:{refused}" in f["drivers"].message
    assert f["delivery"].status == "ok" and "last batch acknowledged" in f["delivery"].message

    # stopped, with readings waiting: nothing sends them, and doctor says so
    dead = free_port()
    path.write_text(yaml.safe_dump(_agent_doc(tmp_path, f"mqtt://127.0.0.1:{dead}", free_port(), [SIM_DRIVER])))
    async with running_daemon(path) as d:
        await until(lambda: d.pipeline.stats()["buffer"]["readings"] > 0, 20)
        live = by_check(await asyncio.to_thread(run_checks, path, env(backlog_warn_age=0.0)))
    assert live["delivery"].status == "warn" and "no batch acknowledged since the agent started" in live[
        "delivery"
    ].message
    assert "uplink(s) disconnected: mqtt" in live["delivery"].message
    f = by_check(await asyncio.to_thread(run_checks, path, env()))
    assert f["agent"].status == "fail" and f["agent"].message.startswith("not running: nothing answers on http://")
    assert "reading(s) wait in the buffer and nothing sends them" in f["agent"].message
    assert "sensegate run" in f["agent"].fix
    assert "running config" not in f and "delivery" not in f


async def test_doctor_says_a_local_edit_does_not_win_over_a_pushed_config(
    tmp_path: Path, broker: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent runs a pushed config; the technician's local edit and reload leave it so: doctor says what to do."""
    from gateway.keys import load_private_key
    from gateway.remote.ops import Broker, push_config
    from tests.gateway.helpers import running_daemon, until

    init_key(tmp_path / "state" / "keys")
    ops = init_key(tmp_path / "ops", name="ops")
    port = free_port()
    doc = _agent_doc(tmp_path, broker.url, port, [SIM_DRIVER], remote={"ops_keys": [str(ops.public_path)]})
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(doc))
    async with running_daemon(path) as d:
        await until(lambda: d.pipeline.stats()["batches"]["acked"] > 0, 20)
        pushed = {k: v for k, v in doc.items() if k != "remote"}
        _, answers = await push_config(Broker.from_url(broker.url), load_private_key(ops.private_path),
                                       yaml.safe_dump(pushed).encode(), to="gw-live", revision=7, within=30)
        assert answers.by_gateway["gw-live"]["state"] == "applied", answers.by_gateway
        f = by_check(await asyncio.to_thread(run_checks, path, env()))
        assert f["running config"].status == "ok" and "pushed config revision 7" in f["running config"].message
        # the technician adds a driver in the local file and reloads: the pushed config stays
        second = {**SIM_DRIVER, "name": "second"}
        path.write_text(yaml.safe_dump({**doc, "drivers": [SIM_DRIVER, second]}))
        d.request_reload()
        await until(lambda: "pushed config revision 7 stays in effect" in caplog.text, 10)
        assert set(d.supervisor.runners) == {"counter"}
        f = by_check(await asyncio.to_thread(run_checks, path, env()))
    rc = f["running config"]
    assert rc.status == "warn" and "runs pushed config revision 7 (1 driver instance(s): counter)" in rc.message
    assert "not the local file (2 driver instance(s): counter, second)" in rc.message
    assert "config push FILE --to gw-live" in rc.fix and "sensegate config use-local" in rc.fix

    # what the fix says: the gateway goes back to its local file (the agent is stopped here)
    cmd = [sys.executable, "-m", "gateway", "config", "use-local", "-c", str(path)]
    res = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "revision 7 is no longer current" in res.stdout, res.stderr
    async with running_daemon(path) as d:
        assert set(d.supervisor.runners) == {"counter", "second"}
        f = by_check(await asyncio.to_thread(run_checks, path, env()))
    assert f["running config"].status == "ok" and "the local file" in f["running config"].message
    res = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "already runs its local file" in res.stdout


def test_one_invalid_part_hides_no_other_finding(tmp_path: Path, broker: Mosquitto) -> None:
    """A bad driver section and a drop-in that does not parse: every other check still runs, and says so."""
    init_key(tmp_path / "state" / "keys")
    path = tmp_path / "gw.yaml"
    bad_driver = {"driver": "sim", "name": "bad", "interval": "soon"}
    path.write_text(yaml.safe_dump({
        "gateway": {"id": "gw-part", "state_dir": str(tmp_path / "state")},
        "uplinks": [_uplink(broker.url)],
        "drivers": [SIM_DRIVER, bad_driver],
    }))
    dropins = tmp_path / "gw.yaml.d"
    dropins.mkdir()
    (dropins / "50-local.yaml").write_text("buffer: {max_bytes: [\n")
    findings = run_checks(path, env())
    f = by_check(findings)
    assert f["config"].status == "fail" and "50-local.yaml" in f["config"].message
    assert "ran without the invalid parts: 50-local.yaml, 1 of 2 driver sections" in f["config"].message
    assert f["identity"].message == "gateway gw-part"
    assert f["signing key"].status == "ok"
    assert "reachable" in f["broker mqtt"].message, f["broker mqtt"]  # the broker was checked
    assert "buffer" in f and "disk" in f and "clock" in f
    assert worst(findings) == "fail"
    # the gateway section itself broken: what needs no config still runs
    path.write_text("gateway: {id: 'bad id!'}\n")
    (dropins / "50-local.yaml").unlink()
    assert [x.check for x in run_checks(path, env())] == ["config", "agent", "clock"]


def test_ops_keys_missing_unreadable_or_absent(tmp_path: Path) -> None:
    """remote.ops_keys: a named file that is not there, a private key where a public one belongs, none at all."""
    from gateway.doctor import check_ops_keys

    path = tmp_path / "gw.yaml"
    f = check_ops_keys(config(tmp_path), path)  # the default: ops-keys/ next to the config, none yet
    assert f.status == "ok" and f.message.startswith("off: no ops key is trusted")
    assert "provision --ops-key" in f.message
    gone = tmp_path / "keys" / "ops.pub.pem"
    f = check_ops_keys(config(tmp_path, remote={"ops_keys": [str(gone)]}), path)
    assert f.status == "fail" and f"{gone} (remote.ops_keys) does not exist" in f.message
    assert "provision --ops-key" in f.fix and "keys init --ops" in f.fix and "keys init --dir" not in f.fix
    ops = init_key(tmp_path / "ops", name="ops")
    (tmp_path / "ops-keys").mkdir()
    (tmp_path / "ops-keys" / "ops.pem").write_bytes(ops.private_path.read_bytes())  # the wrong half
    f = check_ops_keys(config(tmp_path), path)
    assert f.status == "fail" and "is not a PEM public key" in f.message and "private half" in f.message
    (tmp_path / "ops-keys" / "ops.pem").write_bytes(ops.public_path.read_bytes())
    assert check_ops_keys(config(tmp_path), path).message == "on: 1 ops key(s) trusted"


def test_a_missing_ops_key_names_the_command_that_makes_one(tmp_path: Path) -> None:
    """`config push` and `command` without an ops key: the ops key command, never the device key one."""
    doc = tmp_path / "push.yaml"
    doc.write_text("gateway: {id: gw-1}\n")
    key = tmp_path / "ops" / "ops.key"
    for cmd in (["config", "push", str(doc)], ["command", "ping"]):
        res = subprocess.run([sys.executable, "-m", "gateway", *cmd, "--to", "gw-1", "--url", "mqtt://127.0.0.1:9",
                              "--sign-key", str(key)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, res.stderr
        assert f"no ops key at {key}: make one on the ops machine with 'sensegate keys init --ops --dir " in res.stderr
        assert "provision --ops-key ops.pub.pem" in res.stderr
