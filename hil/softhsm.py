"""A throw-away SoftHSM2 token in a directory of its own: the simulated secure element for tests,
the demo (`sensegate demo --pkcs11`) and the bench.

SoftHSM2 finds its tokens through the file named by ``SOFTHSM2_CONF``; a process reads it once,
when the library is initialised, so give ``env()`` to a child process (or set it before the first
token key is opened in this one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from gateway.pkcs11uri import build

MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def softhsm_util() -> str:
    """Path of softhsm2-util, or a clear error naming the Debian package."""
    found = shutil.which("softhsm2-util")
    if not found or not os.path.exists(MODULE):
        raise RuntimeError("SoftHSM2 is not installed: sudo apt-get install softhsm2")
    return found


class SoftHsm:
    """One initialised token (label, user PIN in a 0600 file) under ``root``."""

    def __init__(self, root: Path, label: str = "sensegate", pin: str = "3141-5926") -> None:
        self.root = root
        self.label = label
        self.pin = pin
        self.conf = root / "softhsm2.conf"
        self.pin_file = root / "token.pin"

    def start(self) -> SoftHsm:
        """Write the config and initialise the token (idempotent for an existing root)."""
        util = softhsm_util()
        tokens = self.root / "tokens"
        tokens.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
        fd = os.open(self.pin_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.pin + "\n")
        if not any(tokens.iterdir()):
            subprocess.run([util, "--init-token", "--free", "--label", self.label, "--pin", self.pin,
                            "--so-pin", self.pin + "-so"], env=self.env(), check=True, capture_output=True)
        return self

    def env(self) -> dict[str, str]:
        """The environment a process needs to see this token."""
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def uri(self, label: str = "device") -> str:
        """The key URI of ``label`` on this token, PIN from the 0600 file."""
        return build(MODULE, self.label, label, f"file:{self.pin_file}")
