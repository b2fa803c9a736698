"""Every fuzz target runs briefly under atheris in `make test` (longer with `make fuzz`): from the
corpus kept in tests/fuzz/corpus, new inputs into a temporary directory, a crash fails the test
with the parser's traceback. What the fuzzers found became regression tests next to the parser's
own tests (tests/drivers/rfid/test_llrp_fuzz_findings.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"
SECONDS = 2


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_runs_clean(name: str, tmp_path: Path) -> None:
    assert any((CORPUS / name).iterdir()), f"tests/fuzz/corpus/{name} has no seeds"
    r = subprocess.run([sys.executable, "-m", "tests.fuzz.run", name, str(tmp_path), str(CORPUS / name),
                        f"-max_total_time={SECONDS}", "-rss_limit_mb=1536", f"-artifact_prefix={tmp_path}/"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    tail = "\n".join(line for line in r.stderr.splitlines() if "Instrumenting" not in line)[-4000:]
    assert r.returncode == 0, f"the {name} fuzzer found a crash:\n{tail}"
    done = re.search(r"#(\d+)\s+DONE\s+cov: (\d+)", r.stderr)
    assert done and int(done.group(1)) > 0 and int(done.group(2)) > 0, tail
