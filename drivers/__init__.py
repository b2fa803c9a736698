"""Built-in drivers, one folder each; found through the `sensegate.drivers` entry points."""
