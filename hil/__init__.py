"""Hardware-in-the-loop: simulated devices (hil.devices) and the rig (see hil/README.md)."""
