"""Run one fuzz target under atheris (libFuzzer): `python -m tests.fuzz.run TARGET [libFuzzer args]`.

    python -m tests.fuzz.run nmea out/fuzz/nmea tests/fuzz/corpus/nmea -max_total_time=60

New inputs go into the first corpus directory named (keep the repository's corpus second, so a
run adds nothing to it unless asked); a crash is written as crash-<sha1> (-artifact_prefix=DIR/).
`make fuzz` runs every target; tests/fuzz/test_fuzz.py runs each briefly in `make test`.
"""

from __future__ import annotations

import sys

import atheris


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit("usage: python -m tests.fuzz.run TARGET [CORPUS_DIR ...] [-libfuzzer_flag=value ...]")
    name = sys.argv.pop(1)
    with atheris.instrument_imports(include=["gateway", "drivers"]):
        from tests.fuzz.targets import TARGETS
    if name not in TARGETS:
        sys.exit(f"unknown target {name!r}; one of: {', '.join(TARGETS)}")
    atheris.Setup(sys.argv, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
