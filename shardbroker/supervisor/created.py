"""What one supervisor process created, so it removes exactly that and nothing else.

A refused ``run`` beside a live broker used to clear that broker's runtime directory on its
way out (and a refused ``--recover`` unlinked the live segment): it cleaned up by name, not by
ownership. Everything a start makes is recorded here the moment it exists."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Created:
    segment: str | None = None  # made by this process (a recovered segment is not)
    files: list[Path] = field(default_factory=list)  # sockets and records it bound or wrote
    dirs: list[Path] = field(default_factory=list)  # directories it may remove once empty

    def remove_files(self) -> None:
        """Remove the recorded files, then the recorded directories that are empty (a
        directory still holding someone else's file stays)."""
        for path in reversed(self.files):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        self.files.clear()
        for d in reversed(self.dirs):
            with contextlib.suppress(OSError):
                d.rmdir()
        self.dirs.clear()
