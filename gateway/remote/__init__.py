"""Remote configuration and commands, signed by ops keys (docs/remote.md).

``envelope`` signs and verifies documents (COSE_Sign1), ``store`` keeps pushed configs on disk
with atomic switches and history, ``commands`` runs signed commands with replay protection,
``agent`` ties them to the daemon's MQTT downlink with a health gate and status messages, and
``ops`` is the operator's side (`sensegate config push`, `command`, `status`).
"""
