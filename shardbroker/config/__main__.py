"""``python -m shardbroker.config``: print conf/broker.toml as the schema writes it."""

import sys

from shardbroker.config.render import render

sys.stdout.write(render())
