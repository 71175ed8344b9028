"""``python -m focalfast.bench``: the subcommand without the other subcommands' imports."""

import sys

from focalfast.bench.cli import main

sys.exit(main())
