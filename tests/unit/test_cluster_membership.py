"""Cluster membership: --connect parsing, hosts files, re-resolution (no sockets, no DNS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardbroker.errors import ConfigError, PublishError
from shardbroker.publisher.membership import (
    Endpoint,
    Membership,
    Target,
    hosts_file_resolver,
    parse_targets,
    read_hosts_file,
)


def test_parse_targets_list_names_ipv6_and_repeats() -> None:
    got = parse_targets("10.0.0.1:1214, brokers.example:1214,[::1]:7,10.0.0.1:1214")
    assert got == [Target("10.0.0.1", 1214), Target("brokers.example", 1214), Target("::1", 7)]
    assert [t.is_address for t in got] == [True, False, True]
    assert parse_targets(["a:1", "b:2,c:3"]) == [Target("a", 1), Target("b", 2), Target("c", 3)]


@pytest.mark.parametrize("bad", ["", "a", "a:", ":1214", "a:0", "a:70000", "a:x", "a:1,,b:2"])
def test_parse_targets_refuses_bad_entries_in_one_line(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_targets(bad)
    assert "--connect" in str(err.value) and "\n" not in str(err.value)


def test_hosts_file_gives_every_line_of_a_name(tmp_path: Path) -> None:
    f = tmp_path / "hosts"
    f.write_text("# brokers\n127.0.0.2 brokers.test b2\n127.0.0.3 brokers.test\n\n"
                 "127.0.0.4 BROKERS.test  # case does not matter\n127.0.0.3 brokers.test\n")
    assert read_hosts_file(str(f))["brokers.test"] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    resolve = hosts_file_resolver(str(f), fallback=None)
    assert resolve("brokers.test", 9) == [("127.0.0.2", 9), ("127.0.0.3", 9), ("127.0.0.4", 9)]
    assert resolve("other", 9) == []
    f.write_text("not-an-address brokers.test\n")
    with pytest.raises(ConfigError, match="is not an address"):
        read_hosts_file(str(f))
    with pytest.raises(ConfigError, match="cannot read"):
        read_hosts_file(str(tmp_path / "missing"))


class FakeDNS:
    def __init__(self) -> None:
        self.table: dict[str, list[tuple[str, int]]] = {}
        self.fail = False
        self.calls = 0

    def __call__(self, name: str, port: int) -> list[tuple[str, int]]:
        self.calls += 1
        if self.fail:
            raise OSError("temporary failure in name resolution")
        return list(self.table.get(name, []))


def test_membership_follows_the_name_and_keeps_brokers_through_a_failed_lookup() -> None:
    dns = FakeDNS()
    dns.table["b.test"] = [("127.0.0.2", 1), ("127.0.0.3", 1)]
    m = Membership(parse_targets("b.test:1,127.0.0.9:5"), dns, refresh_s=5.0,
                   failure_refresh_s=0.5)
    assert [e.label for e in m.start(now=100.0)] == ["127.0.0.2:1", "127.0.0.3:1",
                                                     "127.0.0.9:5"]
    assert m.endpoints[0].name == "b.test"
    assert not m.due(104.9) and m.due(105.0)
    m.note_failure(101.0)  # a broker failed: look again soon
    assert m.due(101.5)
    dns.table["b.test"] = [("127.0.0.3", 1), ("127.0.0.1", 44)]  # one left, one on a new port
    change = m.refresh(101.5)
    assert change.added == [Endpoint("127.0.0.1", 44)]
    assert change.removed == [Endpoint("127.0.0.2", 1)]
    dns.fail = True
    change = m.refresh(107.0)
    assert change.added == change.removed == []  # a DNS hiccup drops nobody
    assert "temporary failure" in m.errors["b.test"]
    assert len(m.endpoints) == 3


def test_membership_of_addresses_only_is_never_re_resolved() -> None:
    dns = FakeDNS()
    m = Membership(parse_targets("127.0.0.1:1,127.0.0.1:2"), dns)
    m.start(0.0)
    assert not m.dynamic and not m.due(1e9) and dns.calls == 0


def test_a_name_that_resolves_to_nothing_is_a_clear_error() -> None:
    dns = FakeDNS()
    with pytest.raises(PublishError) as err:
        Membership(parse_targets("nothing.test:1214"), dns).start(0.0)
    assert "nothing.test:1214 resolves to no broker" in str(err.value)
    dns.fail = True
    with pytest.raises(PublishError, match="temporary failure"):
        Membership(parse_targets("nothing.test:1214"), dns).start(0.0)
