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
    kw.setdefault("connect_timeout", 2.0)
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
    assert [x.check for x in f] == ["config", "clock"]  # nothing else can be judged
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
    os.chmod(pty, 0o620)  # owner root, group tty: like a serial port in group dialout
    cfg = config(tmp_path, probe, drivers=[{"driver": "probe", "port": pty}])
    f = only(check_devices(cfg, env(service_user="nobody")))
    group = __import__("grp").getgrgid(os.stat(pty).st_gid).gr_name
    assert f.status == "fail" and "nobody may not read and write it" in f.message
    assert f.fix == f"sudo usermod -aG {group} nobody && sudo systemctl restart sensegate"
    os.chmod(pty, 0o666)
    assert only(check_devices(cfg, env(service_user="nobody"))).status == "ok"


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
        .not_valid_before(now - dt.timedelta(days=400))
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
    # everything but the clock is fine here; the clock is whatever this machine's is
    assert {f["status"] for f in doc["findings"] if f["check"] != "clock"} == {"ok"}
    assert (
        res.returncode
        == {"ok": 0, "warn": 1, "fail": 2}[clock["status"]]
        == {"ok": 0, "warn": 1, "fail": 2}[doc["status"]]
    )
    path.write_text("gateway: {id: 'bad id!'}\n")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "[FAIL] config: invalid:" in res.stdout
