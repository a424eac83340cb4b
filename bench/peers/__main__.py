"""`python -m bench.peers [--trades N] [--repeats R]`: see the bench.peers docstring."""

from bench.peers import main

raise SystemExit(main())
