"""The fleet ingest (`sensegate ingest`, `sensegate fleet`): every gateway's batches verified,
stored exactly once, and a completeness ledger per gateway.

Read ``contract.py`` first: it is the whole design in one page. Then, one module per stage:

* ``sources/``: where batches come from (``nats``: a NATS JetStream cluster taking the gateways'
  MQTT on its MQTT listener; ``mqtt``: an MQTT broker such as mosquitto, for one site);
* ``verify``: a message -> a verified batch, a blob chunk, or refused with the reason;
* ``trust``: the registry binding each gateway to its keys, as the workers hold it;
* ``ledger``: what a transaction decides (duplicates, chain, readings to insert, gaps);
* ``rows``: a reading as a database row;
* ``stores/``: the back-ends (``sqlite``, the embedded default; ``postgres``, the fleet's);
* ``worker``: fetch, verify, store, acknowledge; ``metrics``: its Prometheus endpoint;
* ``cli``: the commands.
"""
