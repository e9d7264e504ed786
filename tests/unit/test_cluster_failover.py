"""The cluster publisher's pure parts: which broker may take a batch, placement, and the book of
batches to send again after a broker failed. No sockets: links are never connected here."""

from __future__ import annotations

import pytest

from shardbroker.errors import PublishError
from shardbroker.publisher.failover import Resends
from shardbroker.publisher.link import DOWN, UP, BrokerLink, InFlight, OutBatch
from shardbroker.publisher.membership import Endpoint
from shardbroker.publisher.placement import Placement


def _link(port: int, *, floor: int = 0, in_flight_bytes: int = 0, sent: int = 0) -> BrokerLink:
    link = BrokerLink(Endpoint("127.0.0.1", port), state=UP, floor=floor)
    link.in_flight_bytes, link.bytes = in_flight_bytes, sent
    return link


def _unacked(*seqs: int, sends: int = 1) -> list[InFlight]:
    return [InFlight(OutBatch(s, 1, 10, b"x", sends=sends), conn_cum=i + 1, mono=True)
            for i, s in enumerate(seqs)]


def test_an_old_batch_goes_only_where_the_broker_will_commit_it() -> None:
    link = _link(1, floor=5)
    old, newer = OutBatch(3, 1, 10, None), OutBatch(5, 1, 10, None)
    assert link.accepts(old, new=True, max_in_flight=4)  # never sent before: safe anywhere
    assert not link.accepts(old, new=False, max_in_flight=4)  # below the floor: skipped there
    assert link.accepts(newer, new=False, max_in_flight=4)
    link.inherit = {3}  # unacked here, sent above every earlier seq: the skip means committed
    assert link.accepts(old, new=False, max_in_flight=4)
    link.state = DOWN
    assert not link.accepts(newer, new=True, max_in_flight=4)


def test_taking_unacked_batches_keeps_only_the_monotonic_ones_for_a_comeback() -> None:
    link = _link(1)
    for seq in (4, 2, 7):  # 2 was sent after 4: a reconnect's skip could swallow it
        link.note_sent(OutBatch(seq, 1, 10, None), track=True, now=0.0)
    assert link.in_flight_bytes == 30
    assert [s.batch.seq for s in link.take_unacked()] == [4, 2, 7]
    assert link.inherit == {4, 7} and link.in_flight_bytes == 0 and not link.in_flight


def test_least_bytes_prefers_the_emptiest_broker_then_the_least_used() -> None:
    a, b, c = _link(1, in_flight_bytes=20), _link(2, in_flight_bytes=10, sent=50),\
        _link(3, in_flight_bytes=10, sent=40)
    assert Placement().choose([a, b, c], OutBatch(0, 1, 10, None), True, 4) is c


def test_round_robin_rotates_and_none_when_no_broker_has_room() -> None:
    links = [_link(1), _link(2), _link(3)]
    rr = Placement("round-robin")
    picks = [rr.choose(links, OutBatch(i, 1, 10, None), True, 4) for i in range(6)]
    assert [p.endpoint.port for p in picks if p] == [2, 3, 1, 2, 3, 1]
    assert rr.choose(links, OutBatch(9, 1, 10, None), True, 0) is None
    with pytest.raises(ValueError, match="use one of"):
        Placement("random")


def test_a_failure_queues_every_unacked_batch_and_times_the_first_resend_elsewhere() -> None:
    r = Resends(retries=3)
    r.take_over("127.0.0.1:2", "recv: reset", _unacked(3, 1), now=10.0)
    assert [b.seq for b in r.oldest_first()] == [1, 3] and r.stuck_for(10.5) == 0.5
    first, second = r.oldest_first()
    r.sent(first, "127.0.0.1:2", now=10.1, elsewhere=False)  # back to the same broker
    assert r.events[0]["first_resend_at"] is None
    r.sent(second, "127.0.0.1:1", now=10.2)
    ev = r.events[0]
    assert (ev["first_resend_at"], ev["first_resend_to"], ev["resent"]) == (10.2, "127.0.0.1:1", 1)
    assert r.resent == 2 and not r.pending and r.stuck_for(99.0) == 0.0


def test_a_batch_out_of_sends_fails_naming_it_but_nothing_is_lost_from_the_book() -> None:
    r = Resends(retries=1)
    with pytest.raises(PublishError, match="batch 6 was sent 2 times"):
        r.take_over("127.0.0.1:2", "no ack", _unacked(5) + _unacked(6, 7, sends=2), now=1.0)
    assert sorted(b.seq for b in r.pending) == [5, 6, 7]  # the summary's unacked list is whole
