from __future__ import annotations

from pathlib import Path

import pytest

from shardbroker import config
from shardbroker.errors import ConfigError


@pytest.mark.parametrize("text, value", [
    ("4096", 4096), ("64KiB", 64 << 10), ("2MiB", 2 << 20), ("1GiB", 1 << 30), ("2TiB", 2 << 40),
    ("7B", 7), (" 3 MB ", 3 * 10**6), ("64kB", 64_000), ("1GB", 10**9), ("2TB", 2 * 10**12),
    ("5mib", 5 << 20), ("5mb", 5 * 10**6),
])
def test_parse_size_decimal_and_binary_units(text: str, value: int) -> None:
    assert config.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1.5MiB", "-3", "2 parsecs", "3 PB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="not a size") as err:
        config.parse_size(text)
    assert "decimal kB, MB" in str(err.value) and "binary KiB, MiB" in str(err.value)


@pytest.mark.parametrize("text, hint", [("1G", "1GB (1 x 10^9) or 1GiB (1 x 2^30)"),
                                        ("512m", "512MB (512 x 10^6) or 512MiB (512 x 2^20)"),
                                        ("4k", "4kB (4 x 10^3) or 4KiB (4 x 2^10)")])
def test_parse_size_refuses_a_bare_prefix(text: str, hint: str) -> None:
    with pytest.raises(ConfigError, match="ambiguous") as err:
        config.parse_size(text)
    assert hint in str(err.value)


def test_parse_hostport() -> None:
    assert config.parse_hostport("127.0.0.1:0") == ("127.0.0.1", 0)
    assert config.parse_hostport("[::1]:1214") == ("::1", 1214)
    with pytest.raises(ConfigError):
        config.parse_hostport("localhost")
    with pytest.raises(ConfigError):
        config.parse_hostport("h:70000")


def test_repo_config_file_loads() -> None:
    cfg = config.load(Path(__file__).parents[2] / "conf" / "broker.toml")
    assert cfg.segment.blog_bytes_per_shard >= 1 << 20


def test_toml_and_overrides(tmp_path: Path) -> None:
    f = tmp_path / "b.toml"
    f.write_text('[broker]\nthreads = 3\n[segment]\nblog_bytes_per_shard = "64MiB"\n')
    cfg = config.load(f, {"broker": {"threads": 2}})
    assert cfg.broker.threads == 2
    assert cfg.segment.blog_bytes_per_shard == 64 << 20


@pytest.mark.parametrize("toml, key", [
    ("[broker]\nthreds = 3\n", "broker.threds"),
    ("[brokr]\n", "brokr"),
    ("[broker]\nthreads = 'two'\n", "broker.threads"),
    ("[broker]\nthreads = -1\n", "broker.threads"),
    ("[limits]\nmax_batch_bytes = '600MiB'\n", "limits.max_batch_bytes"),
    ("[broker]\nbackend = 'rdma'\n", "broker.backend"),
    ("[broker]\nlisten = 'nowhere'\n", "listen"),
])
def test_bad_config_names_the_key(tmp_path: Path, toml: str, key: str) -> None:
    f = tmp_path / "b.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as err:
        config.load(f)
    assert key in str(err.value)


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[broker\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(bad)


def test_round_trip_through_dict() -> None:
    cfg = config.load(None, {"socket": {"rcvlowat_cap": 0}})
    again = config.load(None, config.to_dict(cfg))
    assert again == cfg
