"""``python -m sdar``: the `sdar` command line (what ``torchrun ... -m sdar train`` runs on every rank)."""

from __future__ import annotations

import sys

from sdar.commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
