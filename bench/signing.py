"""Batches signed per second through each kind of device key, and the reading rate that allows.

`python -m bench.signing` signs full 5,000-reading batches (the default batch.max_readings; about
180 KB of SenML-CBOR) on one thread, as the batcher does, with: a PEM Ed25519 key (libsodium), a
PEM P-256 key (cryptography), SoftHSM2 ES256 and Ed25519 keys, and a simulated TPM 2.0's ES256 key
(swtpm + tpm2-pkcs11; skipped with the reason when its packages are missing). Each signature is
verified once. Figures, never assertions; `--tiny` is the run tests/bench/test_bench_runs.py makes.

Columns: `batches/s` (signatures of a full batch per second), `ms/batch`, `ceiling readings/s`
(batches/s x 5,000: the most readings a second the signing could carry), `x PEM Ed25519` (the
ratio to the default key, measured in the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2

from gateway import cose
from gateway.keys import Signer, as_signer, generate

READINGS = 5000


def batch_payload(n: int = READINGS) -> bytes:
    """A SenML-CBOR pack like a sim driver's batch: name, time, value, sequence per record."""
    t0 = 1_760_000_000.0
    return cbor2.dumps([{0: "gw-bench/sim/n", 6: t0 + i * 0.001, 2: float(i), -24: i} for i in range(n)])


def _measure(key: Signer, payload: bytes, seconds: float) -> dict[str, Any]:
    protected = cose.protected_header(key, key.kid, {cose.CONTENT_TYPE: 112, "sq": [1, READINGS]})
    sig = cose.sign(key, protected, payload)  # warm up, and prove it verifies
    cose.verify(cose.parse_sign1(cose.encode_sign1(protected, payload, sig)), key.public_key())
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 3:
        cose.sign(key, protected, payload)
        n += 1
    rate = n / elapsed
    return {"batches_per_s": round(rate, 1), "ms_per_batch": round(1000 / rate, 3),
            "ceiling_readings_per_s": round(rate * READINGS), "signatures": n}


def _token_keys(tmp: Path) -> list[tuple[str, Callable[[], Signer]]]:
    """SoftHSM2 (both algorithms) and, where its packages are here, the simulated TPM."""
    from gateway.hsm import create_key, open_token_key
    from hil.softhsm import SoftHsm

    hsm = SoftHsm(tmp / "softhsm").start()
    os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
    out: list[tuple[str, Callable[[], Signer]]] = []
    for alg in ("es256", "ed25519"):
        create_key(hsm.uri(f"bench-{alg}"), alg)  # type: ignore[arg-type]
        out.append((f"SoftHSM2 {alg}", lambda a=alg: open_token_key(hsm.uri(f"bench-{a}"))))
    return out


def _tpm(tmp: Path, seconds: float, payload: bytes) -> dict[str, Any]:
    """The simulated TPM in a child process (its library reads its environment once, at load)."""
    import subprocess

    from hil.swtpm import SimulatedTpm

    try:
        tpm = SimulatedTpm(tmp / "tpm").start()
    except RuntimeError as e:
        return {"skipped": str(e)}
    try:
        code = ("import json, sys; from bench.signing import _child_tpm; "
                f"print(json.dumps(_child_tpm(sys.argv[1], {seconds})))")
        r = subprocess.run([sys.executable, "-c", code, tpm.uri("bench")], env=tpm.env(), capture_output=True,
                           text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
        if r.returncode:
            return {"skipped": f"TPM run failed: {r.stderr.strip()[-300:]}"}
        return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]
    finally:
        tpm.stop()


def _child_tpm(uri: str, seconds: float) -> dict[str, Any]:
    from gateway.hsm import create_key, open_token_key

    create_key(uri, "es256")
    key = open_token_key(uri)
    try:
        return _measure(key, batch_payload(), seconds)
    finally:
        key.close()


def run(seconds: float) -> dict[str, Any]:
    """Every key kind's figures, keyed by name."""
    payload = batch_payload()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="sg-bench-sign-") as d:
        tmp = Path(d)
        kinds: list[tuple[str, Callable[[], Signer]]] = [
            ("PEM ed25519", lambda: as_signer(generate("ed25519"))),
            ("PEM es256", lambda: as_signer(generate("es256"))),
        ]
        try:
            kinds += _token_keys(tmp)
        except (RuntimeError, ImportError) as e:
            results["SoftHSM2"] = {"skipped": str(e)}
        for name, make in kinds:
            key = make()
            try:
                results[name] = _measure(key, payload, seconds)
            finally:
                key.close()
        results["TPM 2.0 (swtpm) es256"] = _tpm(tmp, seconds, payload)
    base = results["PEM ed25519"]["batches_per_s"]
    for r in results.values():
        if "batches_per_s" in r:
            r["x_pem_ed25519"] = round(r["batches_per_s"] / base, 3)
    return {"payload_bytes": len(payload), "readings_per_batch": READINGS, "results": results}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.signing", description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0, help="signing time per key kind")
    p.add_argument("--tiny", action="store_true", help="a fraction of a second per kind (for make test)")
    p.add_argument("--out", default="", help="also write the figures as JSON here")
    args = p.parse_args(argv)
    data = run(0.05 if args.tiny else args.seconds)
    print(f"signing full batches: {READINGS} readings, {data['payload_bytes']:,} bytes of SenML-CBOR, one thread")
    print(f"{'key':<24} {'batches/s':>10} {'ms/batch':>9} {'ceiling readings/s':>19} {'x PEM Ed25519':>14}")
    for name, r in data["results"].items():
        if "skipped" in r:
            print(f"{name:<24} skipped: {r['skipped']}")
            continue
        print(f"{name:<24} {r['batches_per_s']:>10,.1f} {r['ms_per_batch']:>9.3f} {r['ceiling_readings_per_s']:>19,}"
              f" {r['x_pem_ed25519']:>14.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
