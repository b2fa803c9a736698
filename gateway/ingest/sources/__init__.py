"""Where the ingest takes batches from (the contract is gateway.ingest.contract.Source).

``nats://HOST:PORT[,nats://HOST2:PORT...]``: a NATS JetStream cluster taking the gateways' MQTT
(the fleet's); ``mqtt://HOST:PORT`` or ``mqtts://...``: an MQTT broker such as mosquitto (a site's).
"""

from __future__ import annotations

from gateway.ingest.contract import Source
from gateway.ingest.stores import NeedsExtra


def open_source(url: str, prefix: str = "sensegate", client_id: str = "sensegate-ingest", **tls: str) -> Source:
    """The source for ``url``; ``tls`` holds ca_file, cert_file, key_file, username, password (MQTT)."""
    if url.startswith("nats://") or url.startswith("tls://"):
        try:
            from gateway.ingest.sources.nats import NatsSource
        except ImportError as e:
            raise NeedsExtra(str(e)) from None
        return NatsSource([u.strip() for u in url.split(",") if u.strip()], prefix=prefix, durable=client_id)
    if url.startswith(("mqtt://", "mqtts://")):
        from gateway.ingest.sources.mqtt import MqttSource
        from gateway.mqtt import MqttSettings

        settings = MqttSettings.from_url(url, client_id=client_id, protocol="3.1.1", persistent=True, **tls)
        return MqttSource(settings, prefix=prefix)
    raise ValueError(f"--broker {url!r}: use nats://HOST:PORT[,nats://HOST:PORT...] or mqtt://HOST:PORT")
