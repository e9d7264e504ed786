"""How control commands find a broker: per-broker records, live ones only, and a clear choice
when several run (files in a temporary runtime directory; no sockets)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shardbroker.control import endpoints
from shardbroker.errors import ConfigError


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(endpoints.ENV_RUNTIME, str(tmp_path))
    monkeypatch.delenv(endpoints.ENV_CONTROL, raising=False)
    return tmp_path


def _live(segment: str) -> endpoints.BrokerRecord:
    """A record for this test process, which is alive."""
    return endpoints.record_for_this_process(segment, f"ipc:///run/{segment}/control.sock",
                                             "127.0.0.1:1214")


def _dead(segment: str) -> endpoints.BrokerRecord:
    """The same pid with another start time: a dead broker whose pid was reused."""
    rec = _live(segment)
    return dataclasses.replace(rec, pid_start=rec.pid_start + 1)


def test_the_one_live_broker_is_the_local_broker(runtime: Path) -> None:
    endpoints.write_record(_live("seg-a"))
    endpoints.write_record(_dead("seg-old"))
    assert [b.segment for b in endpoints.live_brokers()] == ["seg-a"]
    assert endpoints.resolve_client_endpoint(None) == "ipc:///run/seg-a/control.sock"


def test_several_live_brokers_must_be_picked(runtime: Path) -> None:
    endpoints.write_record(_live("seg-a"))
    endpoints.write_record(_live("seg-b"))
    with pytest.raises(endpoints.SeveralBrokers) as err:
        endpoints.resolve_client_endpoint(None)
    text = str(err.value)
    assert "\n" not in text
    assert "2 brokers run on this host: seg-a (pid" in text and "seg-b (pid" in text
    assert "--segment NAME or --control ENDPOINT" in text
    assert [b.segment for b in err.value.brokers] == ["seg-a", "seg-b"]
    assert endpoints.resolve_client_endpoint(None, "seg-b") == "ipc:///run/seg-b/control.sock"
    assert endpoints.resolve_client_endpoint("tcp://127.0.0.1:9", "seg-b") == "tcp://127.0.0.1:9"


def test_environment_picks_before_the_scan(runtime: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    endpoints.write_record(_live("seg-a"))
    endpoints.write_record(_live("seg-b"))
    monkeypatch.setenv(endpoints.ENV_CONTROL, "ipc://picked")
    assert endpoints.resolve_client_endpoint(None) == "ipc://picked"
    assert endpoints.resolve_client_endpoint(None, "seg-a") == "ipc:///run/seg-a/control.sock"


def test_a_segment_no_live_broker_serves_is_an_error_naming_the_live_ones(runtime: Path) -> None:
    endpoints.write_record(_live("seg-a"))
    endpoints.write_record(_dead("seg-old"))
    for name in ("seg-old", "seg-none"):
        with pytest.raises(endpoints.BrokerLookupError,
                           match=f"no running broker serves segment '{name}' "
                                 r"\(running here: seg-a\)"):
            endpoints.resolve_client_endpoint(None, name)


def test_hugetlbfs_segment_paths_find_their_record_by_file_name(runtime: Path) -> None:
    endpoints.write_record(_live("/dev/hugepages/seg-h"))
    assert (runtime / "seg-h" / endpoints.RECORD_NAME).exists()
    assert endpoints.resolve_client_endpoint(None, "/dev/hugepages/seg-h").endswith(
        "control.sock")


def test_no_broker_at_all(runtime: Path) -> None:
    endpoints.write_record(_dead("seg-old"))
    with pytest.raises(ConfigError, match="no local broker found"):
        endpoints.resolve_client_endpoint(None)


def test_pointer_file_is_a_fallback_and_a_stale_one_is_removed(runtime: Path) -> None:
    endpoints.write_default_endpoint("tcp://127.0.0.1:5555")
    assert endpoints.resolve_client_endpoint(None) == "tcp://127.0.0.1:5555"
    endpoints.write_record(_live("seg-a"))  # a live record wins over the pointer
    assert endpoints.resolve_client_endpoint(None) == "ipc:///run/seg-a/control.sock"
    (runtime / "seg-a" / endpoints.RECORD_NAME).unlink()
    endpoints.write_default_endpoint(f"ipc://{runtime}/gone/control.sock")  # a dead broker's
    with pytest.raises(ConfigError, match="no local broker found"):
        endpoints.resolve_client_endpoint(None)
    assert not endpoints.default_endpoint_file().exists()


def test_unreadable_records_are_skipped(runtime: Path) -> None:
    (runtime / "junk").mkdir()
    (runtime / "junk" / endpoints.RECORD_NAME).write_text("{not json")
    endpoints.write_record(_live("seg-a"))
    assert [b.segment for b in endpoints.live_brokers()] == ["seg-a"]


def test_record_round_trips(runtime: Path) -> None:
    rec = _live("seg-a")
    path = endpoints.write_record(rec)
    assert endpoints.read_record(path) == rec
    assert (path.parent.stat().st_mode & 0o777) == 0o700
