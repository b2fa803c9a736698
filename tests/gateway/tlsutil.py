"""Make a throw-away CA, server and client certificates for TLS tests."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[str, str]:
    kp, cp = path.with_suffix(".key"), path.with_suffix(".crt")
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    kp.chmod(0o600)
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cp), str(kp)


def make_pki(d: Path, name: str = "ca", clients: list[str] | None = None,
             server_ips: tuple[str, ...] = ("127.0.0.1",)) -> dict[str, str]:
    """CA + server cert for localhost and ``server_ips`` + client cert (and one per name in
    ``clients``, with that CN, as ``<cn>_cert`` / ``<cn>_key``); returns file paths."""
    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sensegate test {name}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    out = {}
    out["ca"], _ = _write(d / name, ca_key, ca)

    def leaf(cn: str, server: bool) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1)))
        if server:
            names = [x509.DNSName("localhost"), *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips)]
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return _write(d / cn, key, b.sign(ca_key, hashes.SHA256()))

    out["server_cert"], out["server_key"] = leaf("server", True)
    out["client_cert"], out["client_key"] = leaf("client", False)
    for cn in clients or []:
        out[f"{cn}_cert"], out[f"{cn}_key"] = leaf(cn, False)
    return out
