import sys

from focalfast.static_cost.command import main

sys.exit(main())
