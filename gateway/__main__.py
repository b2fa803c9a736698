"""`python -m gateway` is `sensegate`."""

from gateway.cli import main

raise SystemExit(main())
