"""`sensegate provision`: give a freshly flashed gateway its identity, keys and trust, then run doctor.

One command for the technician, safe to run again (it keeps an existing device key):

1. writes the gateway id (and site, broker URL) into the config, changing only those values
   in the file (comments and layout stay) and refusing a result that does not validate;
2. makes the device signing key (mode 0600, owned by the service user) if there is none, and
   exports its public key as ``<keys dir>/<gateway-id>.pub.pem``: the file ops give the
   receiver, which binds the key to this gateway by that name (``sensegate receive --trust``);
3. optionally makes a TLS client key and a CSR for the broker's CA (mutual TLS);
4. installs the broker's CA certificate and the ops public keys (for signed config and commands);
5. runs `sensegate doctor` and returns its verdict.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import ConfigInvalid, GatewayConfig, load_config_bytes
from gateway.keys import KeyFileError, PublicKey, fingerprint, init_key, load_private_key, load_public_key, public_pem
from gateway.receiver.trust import DEFAULT_KEY_NAME, PUB_SUFFIX
from gateway.registry import Registry

DEFAULT_CONFIG = """\
# sensegate: this gateway's configuration (YAML). After editing, check it and apply it:
#   sensegate check /etc/sensegate/sensegate.yaml && sudo systemctl reload sensegate
# Every option, with its default and description: sensegate check --schema
config_version: 1
gateway:
  id: CHANGE-ME            # set by: sudo sensegate provision --id <GATEWAY-ID>
  site: ""                 # where it is (street cabinet, pole number); provision --site
  state_dir: /var/lib/sensegate
  log_level: info
buffer:
  max_bytes: 256MiB        # bound on buffered readings; doctor checks it fits on the disk
  policy: drop_oldest
uplinks:
  - type: mqtt
    url: mqtts://broker.invalid:8883   # set by: sudo sensegate provision --broker mqtts://HOST:8883
    tls:
      ca_file: /etc/sensegate/broker-ca.pem   # installed by: sudo sensegate provision --ca FILE
      # Mutual TLS: `sudo sensegate provision --csr` writes tls.key and tls.csr next to the
      # device key; have the CA sign the CSR, save the certificate as tls.crt, then uncomment:
      # cert_file: /var/lib/sensegate/keys/tls.crt
      # key_file: /var/lib/sensegate/keys/tls.key
metrics:
  enabled: true
  listen: 127.0.0.1:9108   # Prometheus text format at http://127.0.0.1:9108/metrics
drivers: []
# Add one section per device; each driver's README has a sample, e.g.:
# drivers:
#   - driver: modbus
#     name: meter
#     transport: rtu
#     device: /dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0
#     ...
"""


class ProvisionError(Exception):
    """Provisioning cannot go on; the message says what to do."""


@dataclass
class Plan:
    """What the technician asked for."""

    config: Path
    gateway_id: str = ""
    site: str | None = None
    state_dir: str = ""
    broker: str = ""
    ca: Path | None = None
    ops_keys: list[Path] = field(default_factory=list)
    csr: bool = False
    service_user: str = "sensegate"


@dataclass
class Result:
    """What provisioning did, line by line, for the technician."""

    done: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)


# -- editing the config in place ------------------------------------------------------------------


def _child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v  # type: ignore[no-any-return]
    return None


def set_values(text: str, changes: dict[str, Any]) -> str:
    """Replace scalar values in YAML text, keeping everything else byte for byte.

    ``changes`` keys: ``gateway.<key>`` or ``mqtt.url`` (the first MQTT uplink).
    Each must already be present in the file.
    """
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    spans: list[tuple[int, int, Any]] = []
    for path, value in changes.items():
        section, key = path.split(".")
        if section == "mqtt":
            parent = None
            uplinks = _child(root, "uplinks")
            for item in uplinks.value if isinstance(uplinks, yaml.SequenceNode) else []:
                t = _child(item, "type")
                if isinstance(t, yaml.ScalarNode) and t.value == "mqtt":
                    parent = item
                    break
            where = "an mqtt uplink (uplinks: - type: mqtt)"
        else:
            parent = _child(root, section)
            where = f"'{section}:'"
        node = _child(parent, key)
        if not isinstance(node, yaml.ScalarNode):
            raise ProvisionError(f"the config has no '{key}:' value under {where}; add it, then run provision again")
        spans.append((node.start_mark.index, node.end_mark.index, value))
    for start, end, value in sorted(spans, reverse=True):
        text = text[:start] + _scalar(value) + text[end:]
    return text


def _scalar(value: Any) -> str:
    """A YAML scalar for ``value``: plain when that reads back as the same string, else quoted."""
    plain = isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*", value)
    if plain and yaml.safe_load(value) == value:
        return str(value)
    return json.dumps(value)  # JSON strings are valid YAML double-quoted scalars


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _chown(path: Path, user: str) -> bool:
    """Give ``path`` to the service user when we are root and the user exists."""
    if os.geteuid() != 0:
        return False
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return False
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return True


# -- the steps --------------------------------------------------------------------------------------


def write_identity(plan: Plan, registry: Registry, result: Result) -> GatewayConfig:
    """Create the config if missing, set id/site/broker, validate, write atomically."""
    path = plan.config
    if path.exists():
        original = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode & 0o777
    else:
        original = DEFAULT_CONFIG
        mode = 0o644
        path.parent.mkdir(parents=True, exist_ok=True)
        result.done.append(f"created {path} from the default config")
    changes: dict[str, Any] = {}
    if plan.gateway_id:
        changes["gateway.id"] = plan.gateway_id
    if plan.site is not None:
        changes["gateway.site"] = plan.site
    if plan.state_dir:
        changes["gateway.state_dir"] = plan.state_dir
    if plan.broker:
        changes["mqtt.url"] = plan.broker
    text = set_values(original, changes) if changes else original
    try:
        cfg = load_config_bytes(text.encode(), registry, str(path))
    except ConfigInvalid as e:
        raise ProvisionError(f"the config would not be valid, nothing written:\n{e}") from None
    if text != original or not path.exists():
        _write_atomic(path, text.encode(), mode)
        for k, v in changes.items():
            result.done.append(f"{path}: {k} = {v}")
    return cfg


def ensure_device_key(cfg: GatewayConfig, plan: Plan, result: Result) -> None:
    """Make the signing key unless one exists; give it to the service user."""
    from gateway.signing import key_path

    path = key_path(cfg)
    if path.exists():
        try:
            key = load_private_key(path)
        except KeyFileError as e:
            raise ProvisionError(f"{e}\n(provision keeps an existing key; fix it or move it away)") from None
        result.done.append(f"kept the existing device key {path}, fingerprint {fingerprint(key.public_key())}")
    else:
        info = init_key(path.parent, alg=cfg.config.batch.alg, name=path.name.removesuffix(".key"))
        key = load_private_key(info.private_path)
        result.done.append(f"made the device key {info.private_path} ({info.alg}), fingerprint {info.fingerprint}")
    exported = export_public_key(cfg, key.public_key(), path.parent)
    result.done.append(f"exported the public key as {exported}")
    result.next_steps.append(
        f"give {exported} to whoever runs the receiver: its name binds the key to gateway "
        f"{cfg.config.gateway.id!r} (sensegate receive --trust DIR-OF-GATEWAY-KEYS; fingerprint above)"
    )
    owned = [p for p in (path.parent, path, path.with_name(path.name.removesuffix(".key") + ".pub.pem"), exported)
             if p.exists()]
    if all(_chown(p, plan.service_user) for p in owned):
        result.done.append(f"{path.parent} belongs to {plan.service_user}")


def export_public_key(cfg: GatewayConfig, pub: PublicKey, keys_dir: Path) -> Path:
    """Write ``<gateway-id>.pub.pem`` (what a receiver trusts for this gateway); remove exports of
    the same key under a former id, so no stale file binds it to another gateway."""
    pem = public_pem(pub)
    dest = keys_dir / f"{cfg.config.gateway.id}{PUB_SUFFIX}"
    for old in keys_dir.glob(f"*{PUB_SUFFIX}"):
        if old != dest and old.name != f"{DEFAULT_KEY_NAME}{PUB_SUFFIX}" and old.read_bytes() == pem:
            old.unlink()
    _write_atomic(dest, pem, 0o644)
    return dest


def ensure_token_key(cfg: GatewayConfig, plan: Plan, result: Result) -> None:
    """A key on the PKCS#11 token the config names (made there unless it exists); its public key
    written beside the state for ops, the PIN file given to the service user alone."""
    from gateway.hsm import NoTokenKey, create_key, open_token_key
    from gateway.pkcs11uri import parse
    from gateway.signing import key_path

    spec = cfg.config.gateway.key_file
    public_path = key_path(cfg).with_name("device.pub.pem")
    try:
        key = open_token_key(spec)
        public, alg = key.public_key(), key.alg
        key.close()
        result.done.append(f"kept the existing device key on the token ({alg}), fingerprint {fingerprint(public)}")
    except NoTokenKey:
        made = create_key(spec, alg=cfg.config.batch.alg)
        public, alg = made.public, made.alg
        result.done.append(f"made the device key on the token ({alg}, not extractable), "
                           f"fingerprint {made.fingerprint}")
    except KeyFileError as e:
        raise ProvisionError(f"{e}\n(the device key is on a PKCS#11 token: check the token and the URI)") from None
    if alg != cfg.config.batch.alg:
        raise ProvisionError(f"the token's key is {alg} but batch.alg is {cfg.config.batch.alg}; set batch.alg: {alg}")
    public_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_atomic(public_path, public_pem(public), 0o644)
    exported = export_public_key(cfg, public, public_path.parent)
    result.done.append(f"wrote the device public key {public_path} and exported it as {exported}")
    result.next_steps.append(
        f"give {exported} to whoever runs the receiver: its name binds the key to gateway "
        f"{cfg.config.gateway.id!r} (sensegate receive --trust DIR-OF-GATEWAY-KEYS; fingerprint above)"
    )
    pin_file = parse(spec).pin_file()
    if pin_file is not None and pin_file.exists():
        os.chmod(pin_file, 0o600)
        if _chown(pin_file, plan.service_user):
            result.done.append(f"{pin_file} (the token PIN) belongs to {plan.service_user}, mode 0600")


def make_csr(cfg: GatewayConfig, plan: Plan, result: Result) -> None:
    """A P-256 TLS client key and a CSR (CN = gateway id) for the broker's CA."""
    from gateway.signing import key_path

    mqtt = next((u for u in cfg.config.uplinks if u.type == "mqtt"), None)
    keys = key_path(cfg).parent
    key_file = Path(mqtt.tls.key_file) if mqtt is not None and mqtt.tls and mqtt.tls.key_file else keys / "tls.key"
    csr_file = key_file.with_suffix(".csr")
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if key_file.exists():
        key = load_private_key(key_file)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ProvisionError(f"{key_file} is not a P-256 key; move it away to make a new one")
        result.done.append(f"kept the existing TLS key {key_file}")
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write_atomic(key_file, pem, 0o600)
        result.done.append(f"made the TLS client key {key_file} (P-256, mode 0600)")
    gid = cfg.config.gateway.id
    name = [x509.NameAttribute(NameOID.COMMON_NAME, gid)]
    if cfg.config.gateway.site:
        name.append(x509.NameAttribute(NameOID.LOCALITY_NAME, cfg.config.gateway.site[:128]))
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(name)).sign(key, hashes.SHA256())
    _write_atomic(csr_file, csr.public_bytes(serialization.Encoding.PEM), 0o644)
    for p in (key_file, csr_file):
        _chown(p, plan.service_user)
    cert = Path(mqtt.tls.cert_file) if mqtt and mqtt.tls and mqtt.tls.cert_file else key_file.with_suffix(".crt")
    result.done.append(f"wrote the certificate request {csr_file} (CN={gid})")
    result.next_steps.append(
        f"have the broker's CA sign {csr_file}; save the certificate as {cert} and set tls.cert_file / "
        "tls.key_file in the config (mutual TLS)"
    )


def install_ca(cfg: GatewayConfig, plan: Plan, result: Result) -> None:
    """Copy the broker's CA bundle to where the config's tls.ca_file points."""
    assert plan.ca is not None
    try:
        certs = x509.load_pem_x509_certificates(plan.ca.read_bytes())
    except (OSError, ValueError) as e:
        raise ProvisionError(f"{plan.ca} is not a PEM certificate (bundle): {e}") from None
    mqtt = next((u for u in cfg.config.uplinks if u.type == "mqtt"), None)
    if mqtt is None or mqtt.tls is None or not mqtt.tls.ca_file:
        raise ProvisionError("the config's mqtt uplink has no tls.ca_file; set one (e.g. /etc/sensegate/broker-ca.pem)")
    dest = Path(mqtt.tls.ca_file)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(dest, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs), 0o644)
    subjects = "; ".join(c.subject.rfc4514_string() for c in certs)
    result.done.append(f"installed the broker CA {dest}: {subjects}")


def install_ops_keys(plan: Plan, result: Result) -> None:
    """Copy ops public keys (which may sign config pushes and commands) into <config dir>/ops-keys/."""
    dest_dir = plan.config.parent / "ops-keys"
    dest_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    for src in plan.ops_keys:
        try:
            key = load_public_key(src)
        except KeyFileError as e:
            raise ProvisionError(str(e)) from None
        name = src.name if src.name.endswith(".pem") else src.name + ".pem"
        dest = dest_dir / name
        _write_atomic(dest, public_pem(key), 0o644)
        result.done.append(f"trusted ops key {dest}, fingerprint {fingerprint(key)}")


def provision(plan: Plan, registry: Registry | None = None) -> tuple[Result, GatewayConfig]:
    """Do every step the plan asks for; raise ProvisionError with a plain message otherwise."""
    result = Result()
    registry = registry or Registry.discover()
    if not plan.config.exists() and not plan.gateway_id:
        raise ProvisionError(f"{plan.config} does not exist yet: give the gateway id with --id")
    cfg = write_identity(plan, registry, result)
    if cfg.config.gateway.key_file.startswith("pkcs11:"):
        ensure_token_key(cfg, plan, result)
    else:
        ensure_device_key(cfg, plan, result)
    if plan.csr:
        make_csr(cfg, plan, result)
    if plan.ca is not None:
        install_ca(cfg, plan, result)
    if plan.ops_keys:
        install_ops_keys(plan, result)
    if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
        result.next_steps.append("start (or restart) the service: sudo systemctl restart sensegate")
    return result, cfg
