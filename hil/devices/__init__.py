"""Simulated devices: real servers on loopback or real pseudo-terminals, never patched methods."""
