"""`python -m spambridge` is the same as the `spambridge` command."""

from spambridge.cli import main

raise SystemExit(main())
