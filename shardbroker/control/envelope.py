"""The one request/reply envelope of the control endpoint (JSON over ZeroMQ).

Request: ``{"v": 1, "cmd": "status" | "stats" | "scale" | "drain" | "stop", "args": {...}}``
Reply:   ``{"v": 1, "ok": true, "result": {...}}`` or ``{"v": 1, "ok": false, "error": "..."}``
"""

from __future__ import annotations

import json
from typing import Any

VERSION = 1
COMMANDS = ("status", "stats", "scale", "drain", "stop")


class EnvelopeError(ValueError):
    pass


def request(cmd: str, **args: Any) -> bytes:
    return json.dumps({"v": VERSION, "cmd": cmd, "args": args}).encode()


def parse_request(raw: bytes) -> tuple[str, dict[str, Any]]:
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeError("request is not JSON") from exc
    if not isinstance(msg, dict) or msg.get("v") != VERSION:
        got = msg.get("v") if isinstance(msg, dict) else None
        raise EnvelopeError(f"unsupported envelope version {got!r}; this broker speaks {VERSION}")
    cmd = msg.get("cmd")
    if cmd not in COMMANDS:
        raise EnvelopeError(f"unknown command {cmd!r}; known: {', '.join(COMMANDS)}")
    args = msg.get("args") or {}
    if not isinstance(args, dict):
        raise EnvelopeError("args must be an object")
    return str(cmd), args


def reply_ok(result: Any) -> bytes:
    return json.dumps({"v": VERSION, "ok": True, "result": result}).encode()


def reply_error(error: str) -> bytes:
    return json.dumps({"v": VERSION, "ok": False, "error": error}).encode()


def parse_reply(raw: bytes) -> dict[str, Any]:
    msg = json.loads(raw)
    if not isinstance(msg, dict) or msg.get("v") != VERSION:
        raise EnvelopeError("reply has an unsupported envelope version")
    return msg
