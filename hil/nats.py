"""A throw-away NATS cluster with JetStream and MQTT listeners on free loopback ports.

For the fleet ingest's tests and benchmark: ``NatsCluster(workdir, size=3)`` starts ``size``
nats-server processes (Debian's ``nats-server``) routed into one cluster, each with JetStream on
file storage under ``workdir`` and an MQTT 3.1.1 listener, so gateways publish to any node and
ingest workers pull from any node. A node can be killed (``kill -9``), stopped and restarted
on the same ports and store, as a crashed or rebooted server would come back.

The MQTT block sets ``stream_replicas`` to the cluster size (up to 3): nats-server otherwise
derives it from the number of routes it was given, which is 2 when a node does not list itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from gateway.testing.procs import wait_port
from hil.servers import end, stable_port

CLUSTER_NAME = "sensegate"


def nats_binary() -> str:
    """Path of nats-server, or a clear error naming the Debian package."""
    found = shutil.which("nats-server") or next((p for p in ("/usr/sbin/nats-server",) if os.path.exists(p)), None)
    if not found:
        raise RuntimeError("nats-server is not installed: sudo apt-get install nats-server")
    return found


class NatsNode:
    """One nats-server of the cluster: its ports, store, config and process."""

    def __init__(self, index: int, workdir: Path) -> None:
        self.index = index
        self.name = f"sg-n{index + 1}"
        self.workdir = workdir
        self.new_ports()
        self.store = workdir / "jetstream"
        self.log = workdir / "nats.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def new_ports(self) -> None:
        self.port, self.cluster_port, self.mqtt_port, self.http_port = (stable_port() for _ in range(4))

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    def write_conf(self, routes: list[int], replicas: int) -> Path:
        """The node's config file (nats-server's own syntax; JSON strings are valid in it)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"server_name: {json.dumps(self.name)}",
            f"listen: \"127.0.0.1:{self.port}\"",
            f"http: \"127.0.0.1:{self.http_port}\"",
            "jetstream {",
            f"  store_dir: {json.dumps(str(self.store))}",
            "  max_memory_store: 256MB",
            "  max_file_store: 8GB",
            "}",
        ]
        if routes:  # a single server has no cluster block
            route_list = ", ".join(json.dumps(f"nats-route://127.0.0.1:{p}") for p in routes)
            lines += ["cluster {", f"  name: {CLUSTER_NAME}", f"  listen: \"127.0.0.1:{self.cluster_port}\"",
                      f"  routes: [{route_list}]", "}"]
        lines += ["mqtt {", f"  listen: \"127.0.0.1:{self.mqtt_port}\"", f"  stream_replicas: {replicas}", "}", ""]
        conf = "\n".join(lines)
        path = self.workdir / "nats.conf"
        path.write_text(conf)
        return path

    def start(self, conf: Path) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([nats_binary(), "-c", str(conf)], stdout=log, stderr=log,
                                         start_new_session=True)
        try:
            wait_port(self.port, timeout=15)
            wait_port(self.mqtt_port, timeout=15)
        except TimeoutError:
            self.kill()
            raise RuntimeError(f"nats-server {self.name} did not start; see {self.log}:\n"
                               f"{self.log.read_text()[-3000:]}") from None

    def healthy(self) -> bool:
        """True when the node answers /healthz with JetStream ready (meta leader known, assets current)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/healthz", timeout=2) as r:
                return bool(json.loads(r.read()).get("status") == "ok")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def joined(self) -> bool:
        """True when the node sees a JetStream meta leader (it is part of a working cluster again;
        its streams and consumers may still be catching up)."""
        try:
            meta = self.jsz().get("meta_cluster")
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return isinstance(meta, dict) and bool(meta.get("leader"))

    def jsz(self) -> dict[str, object]:
        """The node's /jsz monitoring document (JetStream state), for tests and reports."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/jsz?streams=1&consumers=1",
                                    timeout=5) as r:
            doc: dict[str, object] = json.loads(r.read())
            return doc

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), then make sure it is gone."""
        proc, self.proc = self.proc, None
        if proc is not None:
            end(proc, signal.SIGTERM)

    def kill(self) -> None:
        """kill -9: no shutdown, no flush beyond what the kernel already has."""
        proc, self.proc = self.proc, None
        if proc is not None:
            end(proc, None)


class NatsCluster:
    """``size`` routed nats-servers with JetStream and MQTT; started and stopped by tests."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.workdir = workdir
        self.nodes = [NatsNode(i, workdir / f"n{i + 1}") for i in range(size)]
        self.replicas = min(3, size)
        self._confs: list[Path] = []

    @property
    def urls(self) -> list[str]:
        """Client URLs of every node (nats-py takes the list and fails over between them)."""
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """All client URLs, comma-separated (the form ``sensegate ingest --broker`` takes)."""
        return ",".join(self.urls)

    def mqtt_url(self, node: int = 0) -> str:
        return self.nodes[node].mqtt_url

    def start(self, within: float = 60.0) -> None:
        """Start every node and wait until the cluster has a JetStream meta leader. A port taken
        by someone else between choosing it and binding it: new ports, and start again."""
        for attempt in range(3):
            routes = [n.cluster_port for n in self.nodes] if len(self.nodes) > 1 else []
            self._confs = [n.write_conf(routes, self.replicas) for n in self.nodes]
            try:
                for node, conf in zip(self.nodes, self._confs, strict=True):
                    node.start(conf)
                self.wait_healthy(within)
                return
            except RuntimeError as e:
                self.stop()
                if "address already in use" not in str(e) or attempt == 2:
                    raise
                for node in self.nodes:
                    node.new_ports()
            except BaseException:
                self.stop()
                raise

    def wait_healthy(self, within: float = 60.0, nodes: list[int] | None = None) -> None:
        """Block until the running (or given) nodes report JetStream healthy."""
        deadline = time.monotonic() + within
        want = [self.nodes[i] for i in nodes] if nodes is not None else [n for n in self.nodes if n.proc]
        while not all(n.healthy() for n in want):
            if time.monotonic() > deadline:
                sick = [n.name for n in want if not n.healthy()]
                logs = "\n".join(f"--- {n.name}\n{n.log.read_text()[-1500:]}" for n in want if n.log.exists())
                raise RuntimeError(f"NATS nodes {sick} not healthy after {within}s\n{logs}")
            time.sleep(0.2)

    def kill(self, node: int) -> None:
        """kill -9 one node."""
        self.nodes[node].kill()

    def stop_node(self, node: int) -> None:
        self.nodes[node].stop()

    def start_node(self, node: int, within: float = 60.0) -> None:
        """Start a stopped or killed node again, on its ports and store; wait until it has joined
        the cluster (a meta leader is known). Its replicas catch up in the background, as in
        production; ``wait_healthy`` waits for that too."""
        n = self.nodes[node]
        n.start(self._confs[node])
        deadline = time.monotonic() + within
        while not n.joined():
            if time.monotonic() > deadline:
                raise RuntimeError(f"NATS node {n.name} did not rejoin within {within}s:\n{n.log.read_text()[-1500:]}")
            time.sleep(0.2)

    def restart(self, node: int, down_for: float = 0.0) -> None:
        self.stop_node(node)
        if down_for:
            time.sleep(down_for)
        self.start_node(node)

    def pids(self) -> dict[str, int]:
        """Process ids of the running nodes, by name (for CPU accounting in the benchmark)."""
        return {n.name: n.pid for n in self.nodes if n.pid is not None}

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
