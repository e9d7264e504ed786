"""Supervisor <-> receiver messages: every verb round-trips; anything else is refused."""

from __future__ import annotations

import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardbroker.receiver import messages as m

STATE = {"peer": "127.0.0.1:4242", "lowat": 1, "separate_ack": False, "acked": 7}

ONE_OF_EACH: list[m.Message] = [
    m.CONN, m.Handover(m.Verb.ADOPT, STATE), m.Handoff(3), m.Handoff(None), m.DRAIN, m.STOP,
    m.Ready({"shard": 1, "cpu": None, "backend": "epoll"}), m.Fail("no /dev/shm"), m.OPENED,
    m.Closed("::1"), m.Handover(m.Verb.MOVE, STATE), m.RETIRED,
]


def test_every_verb_has_a_message() -> None:
    assert {msg.verb for msg in ONE_OF_EACH} == set(m.Verb)
    assert {type(msg) for msg in ONE_OF_EACH} == set(typing.get_args(m.Message))
    assert [v.value for v in m.Verb][:3] == ["conn", "adopt", "handoff"]
    with pytest.raises(ValueError):
        m.Bare(m.Verb.ADOPT)  # a verb with an argument has its own class
    with pytest.raises(ValueError):
        m.Handover(m.Verb.STOP, {})


@pytest.mark.parametrize("msg", ONE_OF_EACH, ids=lambda msg: msg.verb.value)
def test_round_trip(msg: m.Message) -> None:
    raw = m.encode(msg)
    assert raw.split(b" ", 1)[0] == msg.verb.encode()
    assert m.decode(raw) == msg


def test_wire_format_of_the_argument_verbs() -> None:
    assert m.encode(m.Handoff(None)) == b"handoff all"
    assert m.encode(m.Handoff(2)) == b"handoff 2"
    assert m.encode(m.Closed("10.0.0.1")) == b"closed 10.0.0.1"
    assert m.encode(m.Fail("x")) == b'fail {"error": "x"}'


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


@given(st.one_of(
    json_objects.map(lambda o: m.Handover(m.Verb.ADOPT, o)),
    json_objects.map(lambda o: m.Handover(m.Verb.MOVE, o)), json_objects.map(m.Ready),
    st.text(max_size=40).map(m.Fail), st.integers(0, 2**31).map(m.Handoff),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).map(m.Closed)))
def test_round_trip_any_argument(msg: m.Message) -> None:
    assert m.decode(m.encode(msg)) == msg


@pytest.mark.parametrize("raw", [
    b"", b"hello", b"CONN", b"conn extra", b"stop now", b"handoff", b"handoff -1",
    b"handoff some", b"adopt", b"adopt [1, 2]", b"move {not json", b"ready \xff\xfe",
    b"\xff\xfe conn",
])
def test_malformed_packets_are_refused(raw: bytes) -> None:
    with pytest.raises(m.BadMessage):
        m.decode(raw)


@given(st.binary(max_size=64))
def test_decode_returns_a_message_or_raises_bad_message(raw: bytes) -> None:
    try:
        msg = m.decode(raw)
    except m.BadMessage:
        return
    assert m.decode(m.encode(msg)) == msg
