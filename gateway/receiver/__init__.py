"""The reference receiver, as a library: verify batches and prove completeness.

    trust = KeyBindings.from_specs(["/etc/sensegate/gateways"])  # <gateway-id>.pub.pem files
    rx = Receiver(trust)
    result = rx.feed(batch_bytes, topic_gateway="gw-0042")  # -> Feed(status, readings, reason)
    rx.summary()                       # batches, readings, gaps, duplicates, bad signatures, forged, ...

A key speaks only for the gateway it is bound to (gateway.receiver.trust); any object with
``lookup(gateway, kid)`` (the ``Trust`` protocol) can stand in for ``KeyBindings``.
"""

from gateway.receiver.core import Feed, Receiver, Summary
from gateway.receiver.trust import KeyBindings, Trust, TrustError
from gateway.wire import Header, Untrusted, parse_header

__all__ = ["Feed", "Header", "KeyBindings", "Receiver", "Summary", "Trust", "TrustError", "Untrusted", "parse_header"]
