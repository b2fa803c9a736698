"""sensegate: the sensing-layer gateway agent (see README.md and docs/)."""

from gateway.lazy import lazy_module

__version__ = "0.1.0"

# paho-mqtt imports urllib.request (and with it http.client and the email package: 2.7 MB
# resident) only to read proxy settings, which it does only when PySocks is installed. The
# module is loaded on first use instead; nothing else changes for code that uses it.
lazy_module("urllib.request")
