"""An independent COSE verifier for the tests: python-cwt, in a venv of its own, as a subprocess.

Why not in the project's venv: cwt pins cbor2<6, and sensegate needs cbor2>=6.1 (5.x leaks
memory on CBOR text strings that are not UTF-8, and receivers decode outside input). Why cwt:
a maintained COSE/CWT implementation written apart from ours (its own CBOR handling of the
structures, cryptography for the signatures), which verifies COSE_Sign1 and COSE_Sign with
EdDSA and ES256 like any third party would. The venv is made once, under ``.venv/cose-verifier``
of the checkout (``SENSEGATE_COSE_VERIFIER`` names another place), from the package index the
project's own venv uses.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("SENSEGATE_COSE_VERIFIER") or ROOT / ".venv" / "cose-verifier")
REQUIREMENT = "cwt>=2.7,<4"
SCRIPT = r"""
import base64, json, sys
from cwt import COSE, COSEKey
out = []
for item in json.load(sys.stdin):
    key = COSEKey.from_pem(item["pem"].encode(), kid=bytes.fromhex(item["kid"]))
    try:
        payload = COSE.new().decode(base64.b64decode(item["msg"]), key)
    except Exception as e:  # every refusal is an answer, said as such
        out.append({"error": f"{type(e).__name__}: {e}"})
    else:
        out.append({"payload": base64.b64encode(payload).decode()})
json.dump(out, sys.stdout)
"""


def python() -> Path:
    """The verifier venv's interpreter, made (and cwt installed) on first use."""
    exe = VENV / "bin" / "python"
    if exe.exists() and subprocess.run([exe, "-c", "import cwt"], capture_output=True).returncode == 0:
        return exe
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, capture_output=True)
    r = subprocess.run([exe, "-m", "pip", "install", "-q", "--disable-pip-version-check", REQUIREMENT],
                       capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError(f"cannot install the independent COSE verifier ({REQUIREMENT}) into {VENV}:\n"
                           f"{r.stderr[-2000:]}")
    return exe


def verify(items: list[tuple[bytes, bytes, bytes]]) -> list[bytes | str]:
    """Verify each (message, public key PEM, kid) with cwt: the payload, or cwt's refusal as text."""
    req = [{"msg": base64.b64encode(m).decode(), "pem": pem.decode(), "kid": kid.hex()} for m, pem, kid in items]
    r = subprocess.run([python(), "-c", SCRIPT], input=json.dumps(req), capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(f"the COSE verifier failed:\n{r.stderr[-2000:]}")
    return [base64.b64decode(a["payload"]) if "payload" in a else a["error"] for a in json.loads(r.stdout)]
