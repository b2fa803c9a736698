"""Feed a receiver many outside messages that hold an invalid UTF-8 CBOR text string; print the
process's resident memory growth (run as a subprocess: ``python -m tests.gateway.leakprobe N``)."""

from __future__ import annotations

import json
import os
import sys

from gateway.keys import Ed25519PrivateKey
from gateway.receiver import KeyBindings, Receiver

BAD = bytes.fromhex("66a6b92fd50016")  # a text string of six bytes that are not UTF-8, then more
MESSAGES = [BAD, b"\xd2\x84" + BAD, b"\x84\x40\xa0" + BAD + b"\x40", b"\x82" + BAD + BAD]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(n: int) -> None:
    rx = Receiver(KeyBindings({"gw-a": [Ed25519PrivateKey(bytes(32)).public_key()]}))
    for i in range(5000):  # warm up: allocator pools, caches
        rx.feed(MESSAGES[i % len(MESSAGES)], "gw-a")
        rx.feed_keys(MESSAGES[i % len(MESSAGES)], "gw-a")
    before = rss()
    for i in range(n):
        rx.feed(MESSAGES[i % len(MESSAGES)], "gw-a")
        rx.feed_keys(MESSAGES[i % len(MESSAGES)], "gw-a")
    s = rx.summary()
    print(json.dumps({"grown": rss() - before, "malformed": s.malformed, "refused": s.key_events_refused,
                      "messages": 2 * n}))


if __name__ == "__main__":
    main(int(sys.argv[1]))
