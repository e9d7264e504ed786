"""Client side of the control endpoint: one request, one reply, bounded in time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq

from shardbroker.control import envelope
from shardbroker.errors import ShardbrokerError


class ControlError(ShardbrokerError):
    pass


def request(endpoint: str, cmd: str, timeout_s: float = 2.0,
            curve_server_key: str | None = None, **args: Any) -> Any:
    """Send one command; return its result or raise ControlError (never hangs)."""
    if endpoint.startswith("ipc://") and not Path(endpoint[len("ipc://"):]).exists():
        raise ControlError(f"no broker at {endpoint}",
                           hint="is `shardbroker run` running? (pass --control to choose)")
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
        sock.setsockopt(zmq.SNDTIMEO, int(timeout_s * 1000))
        if curve_server_key:
            from zmq import auth as zmq_auth

            server_public, _ = zmq_auth.load_certificate(curve_server_key)
            public, secret = zmq.curve_keypair()
            sock.curve_serverkey = server_public
            sock.curve_publickey = public
            sock.curve_secretkey = secret
        sock.connect(endpoint)
        try:
            sock.send(envelope.request(cmd, **args))
            raw = sock.recv()
        except zmq.Again:
            raise ControlError(f"no answer from a broker at {endpoint} within {timeout_s:g} s",
                               hint="is `shardbroker run` running? (pass --control to choose)"
                               ) from None
        reply = envelope.parse_reply(raw)
        if not reply.get("ok"):
            raise ControlError(f"broker refused {cmd}: {reply.get('error')}")
        return reply.get("result")
    finally:
        sock.close(linger=0)
        ctx.term()
