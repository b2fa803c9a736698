"""The reference receiver, as a library: verify batches and prove completeness.

    rx = Receiver([load_public_key(Path("gw.pub.pem"))])
    result = rx.feed(batch_bytes)      # -> Feed(status, readings, reason)
    rx.summary()                       # batches, readings, gaps, duplicates, bad signatures, ...
"""

from gateway.receiver.core import Feed, Receiver, Summary

__all__ = ["Feed", "Receiver", "Summary"]
