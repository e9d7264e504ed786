"""One typed configuration: built-in defaults <- TOML file (conf/broker.toml) <- CLI flags.

schema.py declares every key once; loader.py reads and checks; render.py writes the
commented conf/broker.toml; units.py parses sizes and addresses."""

from shardbroker.config.loader import load, overrides_from_flags, to_dict, validate
from shardbroker.config.schema import (
    BACKENDS,
    RETENTIONS,
    BrokerConfig,
    Config,
    ControlConfig,
    LimitsConfig,
    LogConfig,
    MetricsConfig,
    SegmentConfig,
    SocketConfig,
    key_of,
)
from shardbroker.config.units import SIZE_UNITS_HINT, format_size, parse_hostport, parse_size

__all__ = [
    "BACKENDS", "RETENTIONS", "SIZE_UNITS_HINT", "BrokerConfig", "Config", "ControlConfig",
    "LimitsConfig", "LogConfig", "MetricsConfig", "SegmentConfig", "SocketConfig",
    "format_size", "key_of", "load", "overrides_from_flags", "parse_hostport", "parse_size",
    "to_dict", "validate",
]
