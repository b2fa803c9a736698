"""sensegate: the sensing-layer gateway agent (see README.md and docs/)."""

__version__ = "0.1.0"
