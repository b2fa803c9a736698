"""Remote configuration and commands, signed by ops keys (docs/remote.md).

``envelope`` signs and verifies documents (COSE_Sign1), ``store`` keeps pushed configs on disk
with atomic switches and history, ``commands`` runs signed commands with replay protection,
``agent`` ties them to the daemon's MQTT downlink, ``gate`` is the health gate of an apply,
``statuses`` publishes the signed answers, ``wiring`` remembers devices not wired yet, ``health``
the signed health summary for the fleet view, ``update`` and ``releases`` signed updates of the
agent itself; ``ops`` and ``profile`` are the operator's side (`sensegate config push`, `command`,
`status`, `ops`; the fleet commands are in gateway.fleet).
"""
