"""What the supervisor tells a receiver process: names and numbers only, never live objects."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ReceiverSpec:
    shard: int
    cpu: int | None  # None: do not pin
    segment: str
    broker_id: int
    control_fd: int  # the receiver's end of a SOCK_SEQPACKET pair with the supervisor
    config: dict[str, Any]  # config.to_dict() of the supervisor's Config
    metrics_endpoint: str = ""  # ZeroMQ PULL endpoint of the supervisor; "" = no metrics
    reuseport_listen: str = ""  # HOST:PORT: accept here ourselves (SO_REUSEPORT mode)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ReceiverSpec:
        return cls(**json.loads(text))
