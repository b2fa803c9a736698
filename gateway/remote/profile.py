"""Operator profiles: the broker, TLS files, signing keys and default group an ops engineer uses,
kept in one file so fleet commands are short (docs/fleet.md, "Profiles")::

    # ~/.config/sensegate/ops.yaml
    default: city
    profiles:
      city:
        url: mqtts://broker.city.example:8883/sensegate
        ca: city-ca.pem                 # relative paths: from this file's directory; ~ expands
        cert: ops.crt
        key: ops-client.key
        sign_key: ops.key
        group: district-7
        trust: gateways/                # the gateways' bound keys (for signed statuses)
      lab:
        url: mqtt://127.0.0.1:1883

Which profile: ``--profile NAME``, else ``$SENSEGATE_PROFILE``, else the file's ``default``,
else the only one. A flag given on the command line always wins over the profile.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.config.schema import ID_PATTERN
from gateway.schema import Field, Model, ValidationError

CONFIG_HOME = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "sensegate"
STATE_HOME = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "sensegate"
ENV_FILE, ENV_PROFILE = "SENSEGATE_OPS_FILE", "SENSEGATE_PROFILE"
PATH_FIELDS = ("ca", "cert", "key", "password_file", "sign_key", "release_key", "rollouts")


class Profile(Model):
    """One named way to reach a fleet: broker, TLS, keys, default group."""

    url: str = Field(default="", pattern=r"^$|^mqtts?://", description="Broker, mqtt[s]://HOST:PORT[/TOPIC-PREFIX].")
    ca: str = Field(default="", description="CA file that signs the broker's certificate (mqtts://).")
    cert: str = Field(default="", description="Client certificate for mutual TLS.")
    key: str = Field(default="", description="Client key for mutual TLS.")
    username: str = Field(default="", description="Broker user name.")
    password_file: str = Field(default="", description="File holding the broker password.")
    sign_key: str = Field(default="", description="Ops private key that signs pushes and commands.")
    release_key: str = Field(default="", description="Release private key that signs agent updates.")
    group: str = Field(default="", pattern=r"^$|" + ID_PATTERN,
                       description="Default group for push, command, fleet status and rollouts.")
    trust: list[str] = Field(default_factory=list,
                             description="Gateways' bound keys: DIR, FILE or GATEWAY-ID=FILE (as --trust).")
    rollouts: str = Field(default="", description="Directory of rollout state files.")


class OpsFile(Model):
    """The whole ops.yaml."""

    default: str = Field(default="", description="Profile used when none is named.")
    profiles: dict[str, Profile] = Field(default_factory=dict, description="Profiles by name.")


class ProfileError(Exception):
    """The profile file is unreadable or names no such profile; the message says which."""


def ops_file() -> Path:
    """Where the profiles live (``$SENSEGATE_OPS_FILE`` overrides)."""
    return Path(os.environ.get(ENV_FILE) or CONFIG_HOME / "ops.yaml")


def load(path: Path | None = None) -> OpsFile:
    """Read and check the profile file; an absent file is an empty one."""
    path = path or ops_file()
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return OpsFile()
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot read: {e}") from None
    try:
        return OpsFile.model_validate(raw)
    except ValidationError as e:
        lines = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors(include_url=False)]
        raise ProfileError(f"{path}: " + "; ".join(lines)) from None


def _resolve_path(value: str, base: Path) -> str:
    if not value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


@dataclass(frozen=True)
class Chosen:
    """The profile in effect (paths made absolute) and its name ('' when there is none)."""

    name: str
    profile: Profile


def choose(name: str | None = None, path: Path | None = None) -> Chosen:
    """The profile named, or by $SENSEGATE_PROFILE, the file's default, or the only one."""
    path = path or ops_file()
    f = load(path)
    want = name or os.environ.get(ENV_PROFILE) or f.default
    if not want:
        if len(f.profiles) != 1:
            return Chosen("", Profile())
        want = next(iter(f.profiles))
    if want not in f.profiles:
        known = ", ".join(sorted(f.profiles)) or "none"
        raise ProfileError(f"no profile {want!r} in {path} (profiles: {known}; make one with `sensegate ops init`)")
    p = f.profiles[want]
    base = path.parent
    update: dict[str, Any] = {k: _resolve_path(getattr(p, k), base) for k in PATH_FIELDS}
    update["trust"] = [t if "=" in t else _resolve_path(t, base) for t in p.trust]
    return Chosen(want, p.model_copy(update=update))


# argparse destination -> profile field; None means "not given" so the profile may fill it
ARG_FIELDS = {"url": "url", "ca": "ca", "cert": "cert", "key": "key", "username": "username",
              "password_file": "password_file", "sign_key": "sign_key", "release_key": "release_key"}


def add_profile_arg(p: argparse.ArgumentParser) -> None:
    """``--profile`` on every ops command."""
    p.add_argument("--profile", default=None,
                   help=f"profile from {CONFIG_HOME / 'ops.yaml'} (default: ${ENV_PROFILE}, the file's default, "
                   "or its only profile)")


def apply(args: argparse.Namespace) -> Chosen:
    """Fill what the command line left out from the profile; flags win. Group only when no
    target was given at all."""
    chosen = choose(getattr(args, "profile", None))
    p = chosen.profile
    for dest, fld in ARG_FIELDS.items():
        if hasattr(args, dest) and getattr(args, dest) in (None, ""):
            setattr(args, dest, getattr(p, fld))
    if hasattr(args, "group") and not getattr(args, "group", None) and not getattr(args, "to", None):
        args.group = p.group or None
    if hasattr(args, "trust") and not args.trust:
        args.trust = list(p.trust)
    if hasattr(args, "rollouts") and not getattr(args, "rollouts", None):
        args.rollouts = p.rollouts or str(STATE_HOME / "rollouts")
    if hasattr(args, "sign_key") and not args.sign_key:
        args.sign_key = str(CONFIG_HOME / "ops.key")
    return chosen


# -- sensegate ops init / show --------------------------------------------------------------------


def add_parsers(sub: Any) -> None:
    """`sensegate ops init|show`."""
    ops = sub.add_parser("ops", help="operator profiles (broker, TLS, keys, default group) in ops.yaml")
    ops_sub = ops.add_subparsers(dest="ops_command", metavar="ACTION")
    ops_sub.required = True
    init = ops_sub.add_parser("init", help="write (or update) a named profile")
    init.add_argument("name", help="profile name, e.g. city or lab")
    for fld, info in Profile.model_fields.items():
        if fld == "trust":
            init.add_argument("--trust", action="append", default=None, metavar="DIR|FILE|GATEWAY-ID=FILE",
                              help=info.description)
        else:
            init.add_argument(f"--{fld.replace('_', '-')}", dest=fld, default=None, help=info.description)
    init.add_argument("--default", action="store_true", help="make it the default profile")
    init.add_argument("--force", action="store_true", help="replace an existing profile of that name")
    show = ops_sub.add_parser("show", help="show a profile as commands will use it (default: every profile)")
    show.add_argument("name", nargs="?", help="profile name")
    show.add_argument("--json", action="store_true")


def main(args: argparse.Namespace) -> int:
    """Entry point for `sensegate ops`."""
    try:
        return _init(args) if args.ops_command == "init" else _show(args)
    except ProfileError as e:
        print(f"sensegate ops: {e}", file=sys.stderr)
        return 2


def _init(args: argparse.Namespace) -> int:
    from gateway.remote.store import write_atomic

    path = ops_file()
    f = load(path)
    if args.name in f.profiles and not args.force:
        raise ProfileError(f"profile {args.name!r} exists in {path}; --force replaces it")
    given = {k: getattr(args, k) for k in Profile.model_fields if getattr(args, k, None) not in (None, [])}
    for k in PATH_FIELDS:  # store what the operator typed, made absolute: the file may be read from elsewhere
        if k in given:
            given[k] = str(Path(given[k]).expanduser().resolve())
    try:
        prof = Profile.model_validate(given)
    except ValidationError as e:
        raise ProfileError("; ".join(f"--{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                                     for err in e.errors(include_url=False))) from None
    doc: dict[str, Any] = {"default": f.default, "profiles": {n: _plain(p) for n, p in f.profiles.items()}}
    doc["profiles"][args.name] = _plain(prof)
    if args.default or not doc["default"]:
        doc["default"] = args.name
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False).encode(), mode=0o600)
    print(f"profile {args.name!r} written to {path}" + (" (default)" if doc["default"] == args.name else ""))
    return 0


def _plain(p: Profile) -> dict[str, Any]:
    return {k: v for k, v in p.model_dump().items() if v not in ("", [], None)}


def _show(args: argparse.Namespace) -> int:
    path = ops_file()
    f = load(path)
    names = [args.name] if args.name else sorted(f.profiles)
    if not names:
        print(f"no profiles in {path}; make one with `sensegate ops init NAME --url ...`", file=sys.stderr)
        return 1
    out = {}
    missing = []
    for n in names:
        p = choose(n, path).profile
        entry = _plain(p)
        for k in PATH_FIELDS:
            v = getattr(p, k)
            if v and k != "rollouts" and not Path(v).exists():
                missing.append(f"{n}.{k}: {v} does not exist")
        missing += [f"{n}.trust: {t} does not exist" for t in p.trust if "=" not in t and not Path(t).exists()]
        out[n] = entry
    if args.json:
        print(json.dumps({"file": str(path), "default": f.default, "profiles": out}, indent=2))
    else:
        print(f"# {path}")
        for n, entry in out.items():
            print(f"{n}:{'  (default)' if n == f.default else ''}")
            for k, v in entry.items():
                print(f"  {k}: {', '.join(v) if isinstance(v, list) else v}")
    for m in missing:
        print(f"sensegate ops: {m}", file=sys.stderr)
    return 1 if missing else 0
