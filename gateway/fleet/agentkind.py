"""`sensegate agent update`: a signed update of the agent itself, rolled out like a config.

The artefact is the release ``.deb`` (its wheelhouse is what the gateway installs) or a set of
wheels (the sensegate wheel, and any dependency it needs newer than the installed one). It is
cut into chunks published retained under ``<prefix>/updates/<sha256>/<index>`` (one copy for the
fleet; MQTT messages have size limits), and each gateway gets a manifest signed by the release
key: version, format, size, SHA-256 and each chunk's hash, the version floor. The answer is the
gateway's agent status: ``healthy`` once the new version proved itself, else ``refused``,
``failed`` or ``rolled_back`` with the reason.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from gateway.fleet.kinds import FAILED, OK, Answer
from gateway.keys import PrivateKey
from gateway.remote import topics
from gateway.remote.envelope import sign

CHUNK = 256 * 1024
_WHEEL = re.compile(r"^sensegate-([^-]+)-")


class BundleError(Exception):
    """The artefact cannot be made into an update; the message says why."""


def make_bundle(paths: list[Path]) -> tuple[bytes, str, str, str]:
    """(bundle bytes, format, version, name) from a .deb, or from wheels and directories of wheels."""
    if len(paths) == 1 and paths[0].suffix == ".deb":
        data = paths[0].read_bytes()
        from gateway.remote.releases import ReleaseError, _deb_wheels

        try:
            wheels = _deb_wheels(data)
        except ReleaseError as e:
            raise BundleError(f"{paths[0]}: {e}") from None
        return data, "deb", _version([n for n, _ in wheels], paths[0]), paths[0].name
    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("*.whl")) if p.is_dir() else [p]
    bad = [str(f) for f in files if f.suffix != ".whl" or not f.is_file()]
    if bad or not files:
        raise BundleError(f"not wheels: {', '.join(bad) or 'none given'} (give the release .deb, or .whl files)")
    version = _version([f.name for f in files], paths[0])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in files:
            info = tar.gettarinfo(str(f), arcname=f.name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with f.open("rb") as src:
                tar.addfile(info, src)
    return buf.getvalue(), "wheels", version, f"sensegate-{version}-wheels.tar"


def _version(names: list[str], where: Path) -> str:
    found = {m.group(1) for n in names if (m := _WHEEL.match(n))}
    if len(found) != 1:
        raise BundleError(f"{where}: needs exactly one sensegate wheel (found {len(found)})")
    return found.pop()


def manifest(bundle: bytes, fmt: str, version: str, name: str, floor: str = "") -> dict[str, Any]:
    chunks = [hashlib.sha256(bundle[i:i + CHUNK]).hexdigest() for i in range(0, len(bundle), CHUNK)]
    return {"version": version, "format": fmt, "size": len(bundle), "sha256": hashlib.sha256(bundle).hexdigest(),
            "chunk": CHUNK, "chunks": chunks, "floor": floor, "name": name}


@dataclass
class AgentKind:
    """An agent update in a rollout."""

    manifest: dict[str, Any]
    bundle_file: str
    name: str = "agent"
    retained_answers: bool = True
    _bundle: bytes | None = field(default=None, repr=False)

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def describe(self) -> str:
        m = self.manifest
        return f"agent update to {m['version']} ({m['format']}, {m['size']} bytes)"

    def topic(self, prefix: str, gateway: str) -> str:
        return topics.agent_set(prefix, gateway)

    def document(self, key: PrivateKey, gateway: str, expires: int) -> bytes:
        return sign(key, "agent", gateway, cbor2.dumps(self.manifest, canonical=True), expires=expires)

    def answer_filters(self, prefix: str) -> list[str]:
        return [topics.agent_status(prefix, "+")]

    def answer(self, prefix: str, topic: str, body: dict[str, Any], sent_at: float | None) -> Answer | None:
        gw = str(body.get("gateway") or topic[len(prefix) + 1:].split("/", 1)[0])
        state, version = body.get("state"), body.get("version")
        reason = str(body.get("reason") or "")
        if version == self.version:
            if state == "healthy":
                return Answer(gw, OK, reason or "healthy", {"running_version": body.get("running_version")})
            if state in ("refused", "failed", "rolled_back"):
                return Answer(gw, FAILED, f"{state.replace('_', ' ')}: {reason}", {})
            return None
        if version is None and state == "refused" and sent_at is not None and float(body.get("ts") or 0) >= sent_at - 5:
            return Answer(gw, FAILED, f"refused: {reason}", {})
        return None

    def _data(self) -> bytes:
        if self._bundle is None:
            self._bundle = Path(self.bundle_file).read_bytes()
        return self._bundle

    def prepare(self, prefix: str, publish: Any) -> None:
        """Publish the chunks, retained, before any manifest goes out."""
        data, sha = self._data(), self.manifest["sha256"]
        for i in range(len(self.manifest["chunks"])):
            publish(topics.update_chunks(prefix, sha, str(i)), data[i * CHUNK:(i + 1) * CHUNK])

    def finish(self, prefix: str, publish: Any) -> None:
        """The rollout is over: the chunks leave the broker."""
        for i in range(len(self.manifest["chunks"])):
            publish(topics.update_chunks(prefix, self.manifest["sha256"], str(i)), b"")

    def to_json(self) -> dict[str, Any]:
        return {"name": "agent", "manifest": self.manifest, "bundle_file": self.bundle_file}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> AgentKind:
        return cls(dict(raw["manifest"]), str(raw["bundle_file"]))


def add_parsers(sub: Any) -> None:
    """`sensegate agent update`."""
    from gateway.fleet.rolloutcli import add_rollout_args
    from gateway.remote.cli import _broker_args

    agent = sub.add_parser("agent", help="update the agent itself on gateways (signed by a release key)")
    agent_sub = agent.add_subparsers(dest="agent_command", metavar="ACTION")
    agent_sub.required = True
    up = agent_sub.add_parser("update", help="roll a release (.deb or wheels) out to a gateway or a group")
    up.add_argument("artefacts", nargs="+", metavar="FILE|DIR",
                    help="the release .deb, or .whl files / a directory of them (one sensegate wheel among them)")
    up.add_argument("--release-key", default=None, help="release private key (default: the profile's)")
    up.add_argument("--floor", default="", help="from this release on, refuse versions below FLOOR (security fixes)")
    to = up.add_mutually_exclusive_group()
    to.add_argument("--to", help="one gateway id")
    to.add_argument("--group", help="a fleet group (default: the profile's)")
    up.add_argument("--expect", type=int, default=None, help=argparse.SUPPRESS)
    _broker_args(up)
    add_rollout_args(up)
    up.set_defaults(wave_timeout=600.0, canary=1)


def main(args: argparse.Namespace) -> int:
    """Entry point for `sensegate agent update`."""
    from gateway.fleet.rolloutcli import start
    from gateway.keys import KeyFileError, load_private_key
    from gateway.remote.cli import prepare
    from gateway.remote.profile import STATE_HOME

    problem = prepare(args, "agent update")
    if problem:
        print(problem, file=sys.stderr)
        return 2
    if not args.release_key:
        print("sensegate agent update: give --release-key (or release_key in the profile); an ops key cannot sign "
              "agent updates", file=sys.stderr)
        return 2
    try:
        key = load_private_key(Path(args.release_key))
        data, fmt, version, name = make_bundle([Path(a) for a in args.artefacts])
    except (OSError, KeyFileError, BundleError) as e:
        print(f"sensegate agent update: {e}", file=sys.stderr)
        return 2
    m = manifest(data, fmt, version, name, args.floor)
    store = Path(args.rollouts or STATE_HOME / "rollouts").expanduser()
    store.mkdir(parents=True, exist_ok=True)
    bundle_file = store / f"{m['sha256'][:16]}.bundle"
    bundle_file.write_bytes(data)
    kind = AgentKind(m, str(bundle_file), _bundle=data)
    return start(args, kind, key, kind.describe(), members=[args.to] if args.to else None)
