import sys

from focalfast.cli import main

sys.exit(main())
