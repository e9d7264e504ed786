"""Start a broker as a child process and wait for its ready line (demo, bench, tests)."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from types import TracebackType
from typing import Any

from shardbroker.errors import BrokerStartError


class BrokerProcess:
    """``with BrokerProcess(["--threads", "2"]) as b: b.port ...``: killed and reaped on exit."""

    def __init__(self, args: list[str], ready_timeout_s: float = 60.0,
                 stderr: int | None = None, env: dict[str, str] | None = None,
                 python: str | None = None) -> None:
        self.args = args
        self.python = python  # the interpreter to run (bench baselines); default: this one
        self.ready_timeout_s = ready_timeout_s
        self.stderr = stderr
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}

    def start(self) -> BrokerProcess:
        """Launch and wait for the ready line (BrokerStartError, process reaped, if none)."""
        self.launch()
        return self.wait_ready()

    def launch(self) -> BrokerProcess:
        """Start the process and return at once (a test that signals it mid-start)."""
        cmd = [self.python or sys.executable, "-m", "shardbroker", "run", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr,
                                     stdin=subprocess.DEVNULL, env=self.env)
        return self

    def wait_ready(self) -> BrokerProcess:
        assert self.proc is not None and self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + self.ready_timeout_s
        line = b""
        try:
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(timeout=left):
                    raise BrokerStartError("broker printed no ready line in time",
                                           hint="see its stderr")
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise BrokerStartError(f"broker exited at start (code {self.proc.wait()})",
                                           hint="see its stderr")
                line += chunk
        except BaseException:
            self.kill()
            raise
        finally:
            sel.close()
        self.ready = json.loads(line.split(b"\n", 1)[0])
        return self

    @property
    def host(self) -> str:
        return str(self.ready["listen"]).rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(str(self.ready["listen"]).rsplit(":", 1)[1])

    @property
    def segment(self) -> str:
        return str(self.ready["segment"])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def receiver_pids(self) -> list[int]:
        return [int(r["pid"]) for r in self.ready.get("receivers", [])]

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self._reap()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self._reap()

    def _reap(self) -> int:
        if self.proc is None:
            return 0
        code = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
