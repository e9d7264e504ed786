"""``python -m shardbroker.bench [flags]``: the same as ``shardbroker bench``."""

import sys

from shardbroker.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
