"""The messages between the supervisor and a receiver, defined once for both sides.

They travel on the SOCK_SEQPACKET pair of each receiver (one message per packet, file
descriptors attached with SCM_RIGHTS where a verb carries sockets). A packet is the verb in
ASCII, then, for verbs that carry an argument, one space and the argument:

    supervisor -> receiver                    receiver -> supervisor
    conn                 + fds: new sockets   ready {info JSON}      booted, serving
    adopt {state JSON}   + fds: a moved conn  fail {"error": text}   cannot boot
    handoff N | all      move N connections   opened                 accepted one (reuseport)
    drain                close your listener  closed SOURCE-ADDRESS  one of its conns closed
    stop                 finish and exit      move {state JSON}      + fds: for another receiver
                                              retired                handed over everything

Pure: bytes in, typed messages out; no sockets. ``decode`` raises ``BadMessage`` for anything
it does not know, so a garbled packet is reported, never half understood.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any, ClassVar


@enum.unique
class Verb(enum.StrEnum):
    CONN = enum.auto()  # StrEnum: the value is the name in lower case, "conn"
    ADOPT = enum.auto()
    HANDOFF = enum.auto()
    DRAIN = enum.auto()
    STOP = enum.auto()
    READY = enum.auto()
    FAIL = enum.auto()
    OPENED = enum.auto()
    CLOSED = enum.auto()
    MOVE = enum.auto()
    RETIRED = enum.auto()


class BadMessage(ValueError):
    """A packet that is not one of the messages below (unknown verb, bad argument)."""


_BARE_VERBS = (Verb.CONN, Verb.DRAIN, Verb.STOP, Verb.OPENED, Verb.RETIRED)


@dataclass(frozen=True)
class Bare:
    """A verb without an argument: one of the constants below."""
    verb: Verb

    def __post_init__(self) -> None:
        if self.verb not in _BARE_VERBS:
            raise ValueError(f"{self.verb} takes an argument")


CONN = Bare(Verb.CONN)  # new publisher sockets (the attached fds) for the receiver to serve
DRAIN = Bare(Verb.DRAIN)  # close your own (SO_REUSEPORT) listener
STOP = Bare(Verb.STOP)  # finish the batches in flight and exit
OPENED = Bare(Verb.OPENED)  # the receiver accepted a connection itself (reuseport)
RETIRED = Bare(Verb.RETIRED)  # the receiver handed every connection over (scale-down)


@dataclass(frozen=True)
class Handover:
    """A connection on its way between receivers (its sockets are the attached fds) with its
    protocol state (Connection.state()): MOVE from the receiver that gives it up to the
    supervisor, ADOPT from the supervisor to the receiver that takes it."""
    verb: Verb
    state: dict[str, Any]

    def __post_init__(self) -> None:
        if self.verb not in (Verb.MOVE, Verb.ADOPT):
            raise ValueError(f"a hand-over is {Verb.MOVE} or {Verb.ADOPT}, not {self.verb}")


@dataclass(frozen=True)
class Ready:
    """The receiver booted: shard, cpu, backend, resumed_at_batch, ... (shown by status)."""
    info: dict[str, Any]
    verb: ClassVar[Verb] = Verb.READY


@dataclass(frozen=True)
class Handoff:
    """Hand ``count`` connections over at their next batch boundary; None: all of them, and
    then retire (scale-down)."""
    count: int | None
    verb: ClassVar[Verb] = Verb.HANDOFF


@dataclass(frozen=True)
class Fail:
    """The receiver cannot boot; ``error`` says why (the supervisor then stops)."""
    error: str
    verb: ClassVar[Verb] = Verb.FAIL


@dataclass(frozen=True)
class Closed:
    """A connection ended; ``source`` is its peer address (per-source admission counts)."""
    source: str
    verb: ClassVar[Verb] = Verb.CLOSED


Message = Bare | Handover | Ready | Handoff | Fail | Closed

HANDOFF_ALL = "all"


def encode(msg: Message) -> bytes:
    head = msg.verb.encode()
    match msg:
        case Handover(state=obj) | Ready(info=obj):
            return head + b" " + json.dumps(obj).encode()
        case Fail(error=error):
            return head + b" " + json.dumps({"error": error}).encode()
        case Handoff(count=count):
            return head + b" " + (HANDOFF_ALL if count is None else str(count)).encode()
        case Closed(source=source):
            return head + b" " + source.encode()
        case _:
            return head


def decode(raw: bytes) -> Message:
    head, sep, arg = raw.partition(b" ")
    try:
        verb = Verb(head.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise BadMessage(f"unknown verb {raw[:32]!r}") from None
    if verb in _BARE:
        if sep:
            raise BadMessage(f"{verb.value} takes no argument: {raw[:48]!r}")
        return _BARE[verb]
    if not sep:
        raise BadMessage(f"{verb.value} needs an argument")
    if verb is Verb.HANDOFF:
        return _handoff(arg)
    if verb is Verb.CLOSED:
        return Closed(arg.decode(errors="replace"))
    try:
        obj = json.loads(arg)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise BadMessage(f"{verb.value}: argument is not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise BadMessage(f"{verb.value}: argument is not a JSON object")
    if verb is Verb.FAIL:
        return Fail(str(obj.get("error", obj)))
    if verb is Verb.READY:
        return Ready(obj)
    return Handover(verb, obj)


def _handoff(arg: bytes) -> Handoff:
    if arg == HANDOFF_ALL.encode():
        return Handoff(None)
    if not arg.isdigit():
        raise BadMessage(f"handoff {arg[:32]!r}: a count or {HANDOFF_ALL!r}")
    return Handoff(int(arg))


_BARE = {v: Bare(v) for v in _BARE_VERBS}
