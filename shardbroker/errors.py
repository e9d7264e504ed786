"""The project's error classes. Every message says what happened and what to do about it."""

from __future__ import annotations


class ShardbrokerError(Exception):
    """Base class: ``str(err)`` is one line, ending with what to do (the hint)."""

    def __init__(self, message: str, hint: str = "") -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message}" + (f" ({hint})" if hint else ""))


class ConfigError(ShardbrokerError):
    """Bad configuration: a key, a value or a combination."""

    def __init__(self, key: str, message: str, hint: str = "") -> None:
        self.key = key
        super().__init__(f"config {key}: {message}", hint)


class SegmentError(ShardbrokerError):
    """The shared-memory segment cannot be created, attached or read."""


class PlatformError(ShardbrokerError):
    """A Linux call failed (affinity, madvise, socket option, ...)."""

    def __init__(self, call: str, errno_: int, message: str, hint: str = "") -> None:
        self.call = call
        self.errno = errno_
        super().__init__(f"{call}: {message}", hint)


class BrokerStartError(ShardbrokerError):
    """The broker could not start (a receiver failed at boot, the port is taken, ...)."""


class PublishError(ShardbrokerError):
    """The broker rejected or dropped a publisher's connection."""

    def __init__(self, message: str, reason: str = "", hint: str = "") -> None:
        self.reason = reason
        super().__init__(message, hint)


class ConsumerError(ShardbrokerError):
    """A consumer cannot register, resume or read (name in use, table full, no access)."""


class ConsumerExpired(ConsumerError):
    """This consumer's heartbeat was older than the segment's consumer timeout: it stopped
    holding data back, and batches may have been overwritten since (``rejoin`` to go on)."""
