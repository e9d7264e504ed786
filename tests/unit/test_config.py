from __future__ import annotations

from pathlib import Path

import pytest

from shardbroker import cli, config
from shardbroker.config import render, schema
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
    ("[segment]\nblog_bytes_per_shard = '32MiB'\n[limits]\nmax_batch_bytes = '1MiB'\n"
     "[socket]\nreadahead = '20MiB'\n", "socket.readahead"),
    ("[broker]\nbackend = 'rdma'\n", "broker.backend"),
    ("[broker]\nheartbeat_timeout_s = nan\n", "broker.heartbeat_timeout_s"),
    ("[broker]\nrestart_backoff_s = inf\n", "broker.restart_backoff_s"),
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


# --------------------------------------------------------------------------- the schema


def test_conf_broker_toml_is_the_schema_written_out() -> None:
    """Every key, with its comment and default, in schema order: regenerate the file with
    `python -m shardbroker.config > conf/broker.toml` after changing the schema."""
    text = (Path(__file__).parents[2] / "conf" / "broker.toml").read_text()
    assert text == render.render()
    assert config.to_dict(config.load(Path(__file__).parents[2] / "conf" / "broker.toml")) \
        == config.to_dict(config.load(None, {"broker": {"listen": "0.0.0.0:1214"}}))


def test_every_key_is_commented_or_shares_the_comment_above() -> None:
    for section, cls in schema.sections():
        fields = schema.keys(cls)
        assert fields[0][1].doc, f"{section}.{fields[0][0].name} has no comment"


def _run_dests() -> set[str]:
    return set(vars(cli._build_parser().parse_args(["run"]))) - {"command", "config"}


def test_every_run_flag_sets_a_config_key_and_only_through_the_schema() -> None:
    in_schema = {flag for _, cls in schema.sections() for _, k in schema.keys(cls)
                 for flag in k.flags}
    assert in_schema == _run_dests()


def test_run_flags_become_overrides() -> None:
    a = cli._build_parser().parse_args([
        "run", "--threads", "3", "--listen", "127.0.0.1:0", "--no-pin", "--oversubscribe",
        "--backend", "auto", "--segment", "first", "--recover", "crashed", "--keep-segment",
        "--blog-size", "64MiB", "--pbr-slots", "64", "--retention", "block",
        "--consumer-timeout", "2.5", "--rcvlowat-cap", "0", "--rcvbuf", "1MiB",
        "--broker-id", "7", "--log-level", "debug"])
    assert config.overrides_from_flags(vars(a)) == {
        "broker": {"listen": "127.0.0.1:0", "threads": 3, "broker_id": 7, "backend": "auto",
                   "pin_cpus": False, "oversubscribe": True},
        "segment": {"name": "crashed", "pbr_slots": 64, "blog_bytes_per_shard": 64 << 20,
                    "keep": True, "recover": True, "retention": "block",
                    "consumer_timeout_s": 2.5},
        "socket": {"rcvbuf": 1 << 20, "rcvlowat_cap": 0},
        "log": {"level": "debug"},
    }
    assert config.overrides_from_flags(vars(cli._build_parser().parse_args(["run"]))) == {}


@pytest.mark.parametrize("toml, line", [
    ("[broker]\nbackend = 'rdma'\n",
     "config broker.backend: 'rdma' is not allowed (use one of auto, epoll, uring)"),
    ("[broker]\nthreads = -1\n", "config broker.threads: -1 is out of range (allowed: >= 0)"),
    ("[segment]\nconsumer_timeout_s = 0\n",
     "config segment.consumer_timeout_s: 0.0 is out of range (allowed: 0.1..86400)"),
    ("[broker]\nthreads = 'two'\n", "config broker.threads: 'two' is a str, expected int"),
    ("[broker]\nheartbeat_timeout_s = 0.5\n", "config broker.heartbeat_timeout_s: 0.5 is below"
                                               " 1 s (use 0 (no watchdog) or at least 1"),
])
def test_a_refusal_is_one_line_with_key_value_and_what_is_allowed(
        tmp_path: Path, toml: str, line: str) -> None:
    f = tmp_path / "b.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as err:
        config.load(f)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


def test_allowed_values_are_spelled_once() -> None:
    from shardbroker.receiver import backend

    assert config.key_of("broker.backend").choices == config.BACKENDS == backend.BACKENDS
    run = cli._build_parser()
    with pytest.raises(SystemExit):
        run.parse_args(["run", "--backend", "rdma"])
