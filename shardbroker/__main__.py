import sys

from shardbroker.cli import main

sys.exit(main())
