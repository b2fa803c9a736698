"""`sensegate fleet simulate`: a fleet of gateways in one process, for tests, demos and the benchmark.

Each simulated gateway has its own key, stream and numbering, and makes its batches with the
gateway's own batch step (``gateway.batcher.Batcher``) and wire format (``gateway.wire``): only
the buffer is in memory instead of SQLite. On top of plain readings a gateway can declare drops,
stop uncleanly (the skip a real restart declares), send a batch again, and a forger can publish
in an enrolled gateway's name with a key nobody enrolled.

``gateways`` is the fleet, ``publish`` carries it over MQTT, ``run`` is the schedule and the
command line.
"""
