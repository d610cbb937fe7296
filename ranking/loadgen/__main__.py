"""`python -m ranking.loadgen ...`: the same as `ranking load ...`."""

import sys

from ranking.loadgen import main

sys.exit(main(prog="python -m ranking.loadgen"))
