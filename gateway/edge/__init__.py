"""Edge processing: a driver instance's ``report:`` rules, applied to each reading before the buffer.

``rules.py`` is the config schema (imported by the driver contract), ``points.py`` the state
kept per point (the filters and the aggregation windows), ``processor.py`` the front the
scheduler's ``emit`` calls. A reading left out here is never numbered, so it is no gap for a
receiver (docs/wire-format.md, "Edge processing"); docs/edge.md is the user's page.

Nothing is imported here: the driver contract imports ``gateway.edge.rules`` and must not pull
the hot path (or itself, circularly) in with it.
"""
