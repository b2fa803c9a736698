"""systemd integration: the sd_notify protocol against a socket the test listens on, the real
daemon's READY/RELOADING/STOPPING/WATCHDOG messages, a wedged loop caught by the watchdog, and
`systemd-analyze verify` / `security` on the shipped unit.

No service manager runs in this container (PID 1 is not systemd, `systemd-run --user` has no
user manager), so the test plays systemd's part: it owns NOTIFY_SOCKET and enforces
WATCHDOG_USEC the way systemd does (no ping within the interval -> SIGABRT).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.service import Notifier, service_env
from tests.gateway.helpers import TESTDRIVERS, install_test_driver

ROOT = Path(__file__).parents[2]
UNIT = ROOT / "systemd" / "sensegate.service"
SENSEGATE = Path(sys.executable).parent / "sensegate"
WEDGE = ROOT / "tests" / "fixtures" / "sgwedge"


class Listener:
    """The service manager's end of NOTIFY_SOCKET: a datagram socket, path or abstract."""

    def __init__(self, tmp: Path, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"sensegate-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            path = tmp / "notify.sock"
            self.sock.bind(str(path))
            self.env = str(path)

    def recv(self, timeout: float) -> dict[str, str] | None:
        """One datagram as a dict of its KEY=VALUE lines, or None on timeout."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    def wait_for(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        """Skip messages until one carries ``key``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            if msg is not None and key in msg:
                return msg
        raise AssertionError(f"no {key} notification within {timeout}s")

    def drain(self) -> None:
        while self.recv(0.001) is not None:
            pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    ln = Listener(tmp_path)
    yield ln
    ln.close()


# -- the protocol, in process -----------------------------------------------------------------


def test_no_op_outside_systemd() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.watchdog_interval is None
    assert n.ready("x") is False and n.watchdog() is False and n.stopping() is False


def test_messages_on_a_path_socket(listener: Listener) -> None:
    n = Notifier({"NOTIFY_SOCKET": listener.env, "WATCHDOG_USEC": "3000000"})
    assert n.enabled and n.watchdog_interval == 1.5
    assert n.ready("3/3 drivers running")
    assert listener.recv(5) == {"READY": "1", "STATUS": "3/3 drivers running"}
    assert n.watchdog()
    assert listener.recv(5) == {"WATCHDOG": "1"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading()
    msg = listener.recv(5)
    assert msg is not None and msg["RELOADING"] == "1"
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= int(msg["MONOTONIC_USEC"]) <= after
    assert n.stopping()
    assert listener.recv(5) == {"STOPPING": "1"}
    n.status("a")
    n.status("a")  # unchanged: not resent
    n.status("b")
    assert listener.recv(5) == {"STATUS": "a"}
    assert listener.recv(5) == {"STATUS": "b"}
    n.close()


def test_abstract_socket(tmp_path: Path) -> None:
    ln = Listener(tmp_path, abstract=True)
    try:
        n = Notifier({"NOTIFY_SOCKET": ln.env})
        assert n.ready()
        assert ln.recv(5) == {"READY": "1"}
        n.close()
    finally:
        ln.close()


def test_watchdog_for_another_pid_or_garbage_is_ignored(listener: Listener) -> None:
    other = Notifier({"NOTIFY_SOCKET": listener.env, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None
    mine = Notifier({"NOTIFY_SOCKET": listener.env, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval == 0.5
    assert Notifier({"NOTIFY_SOCKET": listener.env, "WATCHDOG_USEC": "soon"}).watchdog_interval is None
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_manager_gone_is_not_fatal(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert n.enabled
    assert n.ready() is False  # logged at debug, never raised
    n.close()


async def test_watchdog_loop_pings_until_cancelled(listener: Listener) -> None:
    import asyncio

    n = Notifier({"NOTIFY_SOCKET": listener.env, "WATCHDOG_USEC": "20000"})
    task = asyncio.create_task(n.watchdog_loop(lambda: "fine"))
    got: list[dict[str, str]] = []
    while sum(1 for m in got if "WATCHDOG" in m) < 3:
        await asyncio.sleep(0.01)
        while (m := listener.recv(0.001)) is not None:
            got.append(m)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert {"STATUS": "fine"} in got
    n.close()


# -- the real daemon under a pretend service manager ------------------------------------------


def _install_drivers(tmp: Path) -> str:
    """tests/fixtures/sgwedge (`wedge`) and sgtestdrivers (`tick`, `stubborn`), as installed drivers."""
    site = tmp / "site"
    install_test_driver(site, "sgwedge", {"wedge": "sgwedge:WEDGE"})
    install_test_driver(site, "sgtestdrivers", {"tick": "sgtestdrivers:TICK", "stubborn": "sgtestdrivers:STUBBORN"})
    return os.pathsep.join([str(site), str(WEDGE), str(TESTDRIVERS), str(ROOT)])


def _start(tmp: Path, listener: Listener, drivers: str, watchdog_usec: int,
           uplink: str = "") -> subprocess.Popen[bytes]:
    cfg = tmp / "gw.yaml"
    uplink = uplink or f"{{type: jsonl, path: {tmp / 'out.jsonl'}}}"
    cfg.write_text(
        f"gateway: {{id: gw-wd, state_dir: {tmp}}}\n"
        f"uplinks: [{uplink}]\n"
        f"drivers:\n{drivers}"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "INVOCATION_ID")}
    env.update(
        NOTIFY_SOCKET=listener.env,
        WATCHDOG_USEC=str(watchdog_usec),
        PYTHONPATH=_install_drivers(tmp),
        **service_env(tmp / "pycache"),  # as the unit runs it: optimised byte code
    )
    return subprocess.Popen(
        [str(SENSEGATE), "run", "-c", str(cfg)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _stop(proc: subprocess.Popen[bytes]) -> bytes:
    if proc.poll() is None:
        proc.kill()
    _, err = proc.communicate(timeout=30)
    return err


def test_daemon_ready_reload_stop(tmp_path: Path, listener: Listener) -> None:
    sim = "  - {driver: sim, interval: 50ms, points: [{name: t, pattern: counter}]}\n"
    proc = _start(tmp_path, listener, sim, watchdog_usec=400_000)
    try:
        ready = listener.wait_for("READY")
        assert ready["STATUS"].startswith("1/1 drivers running") or "drivers running" in ready["STATUS"]
        for _ in range(3):
            listener.wait_for("WATCHDOG", timeout=10)
        proc.send_signal(signal.SIGHUP)
        msg = listener.wait_for("RELOADING")
        assert int(msg["MONOTONIC_USEC"]) > 0
        listener.wait_for("READY")
        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING")
        assert proc.wait(timeout=30) == 0
    finally:
        _stop(proc)


def test_wedged_loop_stops_pinging_and_is_caught(tmp_path: Path, listener: Listener) -> None:
    flag = tmp_path / "wedge.flag"
    wedge = f"  - {{driver: wedge, interval: 50ms, wedge_file: {flag}}}\n"
    usec = 400_000  # systemd would kill after 0.4 s of silence; the daemon pings every 0.2 s
    proc = _start(tmp_path, listener, wedge, watchdog_usec=usec)
    try:
        listener.wait_for("READY")
        for _ in range(3):
            listener.wait_for("WATCHDOG", timeout=10)
        flag.touch()
        taken = flag.with_suffix(".taken")
        deadline = time.monotonic() + 30
        while not taken.exists():
            assert time.monotonic() < deadline, "the wedge driver never ran"
            time.sleep(0.02)
        listener.drain()  # pings sent before the loop blocked
        # What systemd does: wait WATCHDOG_USEC for a ping; none comes (3x the interval here).
        late = listener.recv(3 * usec / 1e6)
        assert late is None, f"a blocked loop cannot ping, yet got {late}"
        assert proc.poll() is None  # still alive, only wedged: exactly what the watchdog is for
        proc.send_signal(signal.SIGABRT)  # systemd's WatchdogSignal=
        assert proc.wait(timeout=30) == -signal.SIGABRT
        err = _stop(proc).decode(errors="replace")
    finally:
        _stop(proc)
    # faulthandler (enabled with the watchdog) shows where the loop was stuck
    assert "Fatal Python error: Aborted" in err
    assert re.search(r'sgwedge\.py", line \d+ in poll', err), err


def _wait_file(path: Path, proc: subprocess.Popen[bytes], within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not path.exists():
        assert proc.poll() is None, "the daemon exited"
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.02)


def test_sighup_and_sigterm_do_not_hang_on_a_driver_that_will_not_stop(tmp_path: Path, listener: Listener) -> None:
    """Two drivers swallow every cancellation for good: a reload that removes one, then SIGTERM,
    each end within their bounds; the stop still commits every reading the drivers emitted
    (the uplink is down: all of them wait in the buffer) and closes the buffer cleanly."""
    from gateway.daemon import HARD_EXIT_AFTER
    from gateway.keys import init_key
    from gateway.testing import free_port

    init_key(tmp_path / "keys")
    hold = tmp_path / "hold"
    hold.touch()  # never removed: these two are stuck until the process ends
    stuck = f"{{driver: stubborn, interval: 1h, timeout: 1h, hold_file: {hold}"
    tick = "  - {driver: tick, name: tick, interval: 20ms, jitter: 0}\n"
    drivers = f"  - {stuck}, name: gone}}\n  - {stuck}, name: stays}}\n{tick}"
    uplink = f"{{type: mqtt, url: 'mqtt://127.0.0.1:{free_port()}', reconnect_max: 1}}"
    proc = _start(tmp_path, listener, drivers, watchdog_usec=0, uplink=uplink)
    try:
        listener.wait_for("READY")
        for name in ("gone", "stays"):
            _wait_file(tmp_path / f"hold.{name}", proc)
        cfg = tmp_path / "gw.yaml"
        cfg.write_text(cfg.read_text().replace(f"  - {stuck}, name: gone}}\n", ""))
        proc.send_signal(signal.SIGHUP)
        listener.wait_for("RELOADING")
        listener.wait_for("READY", timeout=30)  # it hung here for ever before (issue 16)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING")
        t0 = time.monotonic()
        rc = proc.wait(timeout=HARD_EXIT_AFTER + 5)  # well under TimeoutStopSec, checked below
        took = time.monotonic() - t0
        err = _stop(proc).decode(errors="replace")
    finally:
        _stop(proc)
    assert rc == 0, err
    assert took < HARD_EXIT_AFTER, f"ended by the last-resort exit, not by the shutdown: {err}"
    for name in ("gone", "stays"):
        said = [ln for ln in err.splitlines() if f"driver instance {name} (stubborn) would not stop" in ln]
        assert len(said) == 1, err
    assert "sgtestdrivers/__init__.py" in err, "the log says where it is stuck"
    assert "reload: 0 instance(s) restarted, 1 stopped, 2 unchanged" in err
    assert re.search(r"exiting with .*driver:stays.* still running", err), err
    db = sqlite3.connect(tmp_path / "buffer.db")
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        stored = db.execute("SELECT COALESCE(SUM(last_seq - first_seq + 1), 0) FROM segments").fetchone()[0]
    finally:
        db.close()
    numbered = int(meta["next_seq"]) - 1
    assert numbered > 10 and stored == numbered, "every reading the drivers emitted was committed"
    assert int(meta["seq_resv"]) == numbered, "a clean close (an unclean one leaves numbers reserved)"


def test_stop_deadlines_are_under_the_units_stop_timeout() -> None:
    from gateway.daemon import HARD_EXIT_AFTER, PIPELINE_FLOOR, SHUTDOWN_DEADLINE, SIDE_CLOSE
    from gateway.scheduler import STOP_WAITS

    stop = next(ln.split("=", 1)[1].strip() for ln in UNIT.read_text().splitlines() if ln.startswith("TimeoutStopSec="))
    assert stop.endswith("s")
    timeout = float(stop[:-1])
    # the steps of a stop, each at its worst, fit the shutdown's deadline
    assert SIDE_CLOSE + sum(STOP_WAITS) + PIPELINE_FLOOR <= SHUTDOWN_DEADLINE
    assert SHUTDOWN_DEADLINE < HARD_EXIT_AFTER <= timeout - 5, (
        "the daemon ends its stop on its own, with time to spare, before systemd would SIGKILL it")


# -- the unit file -----------------------------------------------------------------------------


def _unit_for_this_host(tmp: Path) -> Path:
    """The shipped unit with ExecStart pointing at this checkout's sensegate (verify wants it to exist)."""
    text = UNIT.read_text().replace("/usr/bin/sensegate", str(SENSEGATE))
    out = tmp / "sensegate.service"
    out.write_text(text)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (hil/system-deps.sh)")
def test_unit_verifies(tmp_path: Path) -> None:
    unit = _unit_for_this_host(tmp_path)
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip() == "", res.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (hil/system-deps.sh)")
def test_unit_is_hardened(tmp_path: Path) -> None:
    unit = _unit_for_this_host(tmp_path)
    res = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for sensegate\.service: ([\d.]+)", res.stdout)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= 2.5, res.stdout  # "OK" band; 1.9 when written


TPM_DROP_IN = ROOT / "systemd" / "sensegate-tpm.conf"


def _security(unit: Path) -> tuple[float, str]:
    """`systemd-analyze security --offline`: the exposure level and its DeviceAllow= line."""
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for sensegate\.service: ([\d.]+)", res.stdout)
    allow = next((line for line in res.stdout.splitlines() if "DeviceAllow=" in line), "")
    assert m, res.stdout + res.stderr
    return float(m.group(1)), allow


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (hil/system-deps.sh)")
def test_the_tpm_drop_in_adds_the_tpm_and_nothing_else(tmp_path: Path) -> None:
    """A TPM-backed gateway: the drop-in verifies with the unit, allows /dev/tpmrm0 and a writable
    tpm2-pkcs11 store; without it (a PEM key) the unit allows no TPM at all."""
    unit = _unit_for_this_host(tmp_path)
    level, allow = _security(unit)
    settings = [line for line in UNIT.read_text().splitlines() if not line.startswith("#")]
    assert "tpm" not in allow and not any("tpm" in line for line in settings)  # the PEM case: no TPM allowed
    drop = tmp_path / "sensegate.service.d"
    drop.mkdir()
    shutil.copy(TPM_DROP_IN, drop / "tpm.conf")
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stderr.strip() == "", res.stderr
    tpm_level, tpm_allow = _security(unit)
    assert "/dev/tpmrm0:rw" in tpm_allow and "/dev/tpm0" not in tpm_allow, tpm_allow
    assert tpm_level <= level + 0.1 and tpm_level <= 2.5, (level, tpm_level)
    keys: dict[str, list[str]] = {}
    for line in TPM_DROP_IN.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    assert keys == {"DeviceAllow": ["/dev/tpmrm0 rw"], "SupplementaryGroups": ["tss"],
                    "Environment": ["TPM2_PKCS11_TCTI=device:/dev/tpmrm0",
                                    "TPM2_PKCS11_STORE=/var/lib/sensegate/tpm2-pkcs11"],
                    "StateDirectory": ["sensegate/tpm2-pkcs11"]}
    store = keys["Environment"][1].split("=", 1)[1]
    assert store.startswith("/var/lib/sensegate/")  # under the state directory: writable with ProtectSystem=strict


def test_a_token_gateway_is_started_as_provisioned() -> None:
    """The unit skips an unprovisioned gateway, and starts one whose key is on a token (no device.key)."""
    conditions = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
                  if line.startswith("ConditionPathExists=")]
    assert conditions == ["|/var/lib/sensegate/keys/device.key", "|/var/lib/sensegate/keys/device.pub.pem"]


def test_unit_has_what_the_issue_asks() -> None:
    keys: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    assert keys["Type"] == ["notify"]
    assert keys["WatchdogSec"] and keys["Restart"] == ["on-failure"]
    assert keys["StartLimitBurst"] and keys["StartLimitIntervalSec"]
    assert keys["User"] == ["sensegate"]
    for k in ("StateDirectory", "ConfigurationDirectory", "LogsDirectory", "ExecReload"):
        assert keys[k], k
    for k in ("ProtectSystem", "NoNewPrivileges", "PrivateTmp", "DevicePolicy"):
        assert keys[k], k
    assert keys["ProtectSystem"] == ["strict"] and keys["DevicePolicy"] == ["closed"]
    allowed = " ".join(keys["DeviceAllow"])
    for dev in ("ttyUSB", "ttyAMA", "i2c", "video4linux"):
        assert dev in allowed
    # the environment the rig, these tests and the benchmark give the daemon is the unit's
    env = dict(e.split("=", 1) for e in keys["Environment"])
    assert env == {k: v for k, v in service_env("/var/cache/sensegate/pycache").items() if v}
    assert keys["CacheDirectory"] == ["sensegate"]


# -- journald-friendly logging -----------------------------------------------------------------


def test_journal_format_under_systemd(tmp_path: Path) -> None:
    """Under systemd (JOURNAL_STREAM set) lines carry <N> priorities and no timestamp of our own."""
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        f"gateway: {{id: gw-j, state_dir: {tmp_path}}}\n"
        f"uplinks: [{{type: jsonl, path: {tmp_path / 'o.jsonl'}}}]\n"
        "drivers:\n  - {driver: sim, interval: 1h, points: [{name: t}]}\n"
        "  - {driver: nosuchdriver}\n"
    )
    env = {**os.environ, "JOURNAL_STREAM": "8:12345", "INVOCATION_ID": "0" * 32}
    res = subprocess.run([str(SENSEGATE), "run", "-c", str(cfg)], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr.splitlines()[0].startswith(str(cfg))  # config errors: FILE:LINE:COL, for the journal too

    cfg.write_text(cfg.read_text().replace("  - {driver: nosuchdriver}\n", ""))
    proc = subprocess.Popen([str(SENSEGATE), "run", "-c", str(cfg)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        head = []
        while not head or "sensegate started" not in head[-1]:
            head.append(proc.stderr.readline())
            assert head[-1], "the daemon exited before it started"
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = [*head, *rest.splitlines()]
    assert head[-1].startswith("<6>sensegate.daemon: sensegate started: gateway gw-j")
    assert all(re.match(r"<[0-7]>sensegate\.", ln) for ln in lines if ln.strip()), lines
    assert not any(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", ln) for ln in lines)  # journald stamps it


def test_journal_formatter_levels_and_multiline() -> None:
    import logging

    from gateway.logs import JournalFormatter

    fmt = JournalFormatter("%(name)s: %(message)s")

    def line(level: int, msg: str) -> str:
        return fmt.format(logging.LogRecord("sensegate.x", level, __file__, 1, msg, None, None))

    assert line(logging.DEBUG, "d") == "<7>sensegate.x: d"
    assert line(logging.INFO, "i") == "<6>sensegate.x: i"
    assert line(logging.WARNING, "w") == "<4>sensegate.x: w"
    assert line(logging.ERROR, "e") == "<3>sensegate.x: e"
    assert line(logging.CRITICAL, "c") == "<2>sensegate.x: c"
    assert line(logging.ERROR, "two\nlines") == "<3>sensegate.x: two\n<3>lines"  # each journal line keeps its level


def test_set_level_changes_the_running_level() -> None:
    import logging

    from gateway.logs import set_level

    log = logging.getLogger("sensegate")
    before = log.level
    try:
        set_level("debug")
        assert log.isEnabledFor(logging.DEBUG)
        set_level("warning")
        assert not log.isEnabledFor(logging.INFO) and log.isEnabledFor(logging.WARNING)
    finally:
        log.setLevel(before)
