"""The cluster publisher's pure parts: which broker may take a batch, placement, and the book of
batches to send again after a broker failed. No sockets: links are never really connected here
(a resend through ClusterPublisher itself runs over stand-in connections)."""

from __future__ import annotations

import pytest

from shardbroker.errors import PublishError
from shardbroker.publisher import cluster, link
from shardbroker.publisher.cluster import ClusterPublisher
from shardbroker.publisher.failover import Resends
from shardbroker.publisher.link import DOWN, UP, BrokerLink, InFlight, OutBatch
from shardbroker.publisher.membership import Endpoint
from shardbroker.publisher.placement import Placement


def _link(port: int, *, in_flight_bytes: int = 0, sent: int = 0) -> BrokerLink:
    ln = BrokerLink(Endpoint("127.0.0.1", port), state=UP)
    ln.in_flight_bytes, ln.bytes = in_flight_bytes, sent
    return ln


def _unacked(*seqs: int, sends: int = 1) -> list[InFlight]:
    return [InFlight(OutBatch(s, 1, 10, b"x", sends=sends), conn_cum=i + 1)
            for i, s in enumerate(seqs)]


def test_taking_unacked_batches_empties_the_link_in_send_order() -> None:
    ln = _link(1)
    for seq in (4, 2, 7):  # a resend (2) may follow a newer batch on one connection
        ln.note_sent(OutBatch(seq, 1, 10, None), track=True, now=0.0)
    assert ln.in_flight_bytes == 30 and [s.conn_cum for s in ln.in_flight] == [1, 2, 3]
    assert [s.batch.seq for s in ln.take_unacked()] == [4, 2, 7]
    assert ln.in_flight_bytes == 0 and not ln.in_flight


def test_least_bytes_prefers_the_emptiest_broker_then_the_least_used() -> None:
    a, b, c = _link(1, in_flight_bytes=20), _link(2, in_flight_bytes=10, sent=50),\
        _link(3, in_flight_bytes=10, sent=40)
    assert Placement().choose([a, b, c], 4) is c


def test_round_robin_rotates_and_none_when_no_broker_is_up_with_room() -> None:
    links = [_link(1), _link(2), _link(3)]
    rr = Placement("round-robin")
    picks = [rr.choose(links, 4) for _ in range(6)]
    assert [p.endpoint.port for p in picks if p] == [2, 3, 1, 2, 3, 1]
    assert rr.choose(links, 0) is None  # all full
    for ln in links[1:]:
        ln.state = DOWN
    assert [rr.choose(links, 4) for _ in range(2)] == [links[0]] * 2
    links[0].state = DOWN
    assert rr.choose(links, 4) is None and Placement().choose(links, 4) is None
    with pytest.raises(ValueError, match="use one of"):
        Placement("random")


def test_a_failure_queues_every_unacked_batch_and_times_the_first_resend_elsewhere() -> None:
    r = Resends(retries=3)
    r.take_over("127.0.0.1:2", "recv: reset", _unacked(3, 1), now=10.0)
    assert [b.seq for b in r.oldest_first()] == [1, 3]
    first, second = r.oldest_first()
    r.sent(first, "127.0.0.1:2", now=10.1)  # back to the same broker: not a failover's resend
    assert r.events[0]["first_resend_at"] is None and r.events[0]["resent"] == 0
    r.sent(second, "127.0.0.1:1", now=10.2)
    ev = r.events[0]
    assert (ev["first_resend_at"], ev["first_resend_to"], ev["resent"]) == (10.2, "127.0.0.1:1", 1)
    assert r.resent == 2 and not r.pending


def test_a_batch_out_of_sends_fails_naming_it_but_nothing_is_lost_from_the_book() -> None:
    r = Resends(retries=1)
    with pytest.raises(PublishError, match="batch 6 was sent 2 times"):
        r.take_over("127.0.0.1:2", "no ack", _unacked(5) + _unacked(6, 7, sends=2), now=1.0)
    assert sorted(b.seq for b in r.pending) == [5, 6, 7]  # the summary's unacked list is whole


class _Conn:
    """Stands in for a broker connection: takes socket options, has nothing to read."""

    def __init__(self, port: int) -> None:
        self.port = port

    def setsockopt(self, *_args: object) -> None:
        pass

    def recv(self, *_args: object) -> bytes:
        raise BlockingIOError

    def close(self) -> None:
        pass


def test_an_old_batch_goes_to_a_broker_that_came_up_after_it_was_first_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The broker skips a resend only when its segment holds that exact batch_seq, so a broker
    whose connection is newer than a batch takes it like any other. (Under the old high-water
    skip it was refused there: the batches waited for another broker, and with none the
    publisher failed after its timeout.)"""
    reachable = {1}
    sent: list[tuple[int, int]] = []  # (broker port, batch_seq) in send order

    def open_connection(host: str, port: int, *_args: object) -> _Conn:
        if port not in reachable:
            raise PublishError(f"connection to {host}:{port} refused")
        return _Conn(port)

    def send_batch(sock: _Conn, seq: int, *_args: object) -> None:
        sent.append((sock.port, seq))

    monkeypatch.setattr(link, "open_connection", open_connection)
    monkeypatch.setattr(link, "_await_broker_id", lambda *_args: "")
    monkeypatch.setattr(cluster, "send_batch", send_batch)
    now = [0.0]
    pub = ClusterPublisher("127.0.0.1:1,127.0.0.1:2", client_id=7, clock=lambda: now[0])
    one, two = (pub._links[Endpoint("127.0.0.1", p)] for p in (1, 2))
    assert (one.state, two.state) == (UP, DOWN)
    for _ in range(4):  # batches 0-3, on broker 1: the only one up
        pub.publish_batch(b"x" * 10, 1)
    reachable.add(2)
    now[0] = 1.0  # broker 2's backoff is over: it comes up, after 0-3 were sent
    pub.publish_batch(b"x" * 10, 1)  # batch 4: the connection to broker 2 is made first
    assert two.state == UP and two.connects == 1
    assert sent == [(1, 0), (1, 1), (1, 2), (1, 3), (2, 4)]  # 4: the emptiest broker

    pub._fail(one, "recv: connection reset")  # 0-3 unacked on broker 1
    assert one.state == DOWN and pub.unacked == 5
    now[0] = 1.01  # before broker 1's backoff is over: broker 2 is the only one up
    pub.publish_batch(b"x" * 10, 1)  # batch 5; the resends go first
    assert sent[5:] == [(2, 0), (2, 1), (2, 2), (2, 3), (2, 5)]
    assert not pub.resends.pending and pub.resent == 4 and two.resent_in == 4
    assert [s.batch.seq for s in two.in_flight] == [4, 0, 1, 2, 3, 5]
    ev = pub.failovers[0]
    assert (ev["broker"], ev["first_resend_to"], ev["first_resend_at"], ev["resent"]) == \
        ("127.0.0.1:1", "127.0.0.1:2", 1.01, 4)
