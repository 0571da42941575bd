"""Child processes: where they run (CPU pinning) and how they always stop.

Owns every process the benchmark starts. Each one is started in a session of
its own, so it never receives the terminal's Ctrl-C and can be stopped as a
process group by its own id: SIGTERM, a bounded wait, then SIGKILL.
``Processes.close()`` stops whatever is still running; ``run.py`` calls it on
success, failure, Ctrl-C and SIGTERM alike. It must not stop anything it did not
start, and never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: Seconds a process has to exit after SIGTERM before it is killed.
STOP_GRACE_S = 15.0


@dataclass(frozen=True, slots=True)
class Cores:
    """The CPUs of the receivers and of the measured client (daemon or bare client)."""

    receiver: tuple[int, ...]
    client: tuple[int, ...]
    #: False when there is a single CPU or no ``taskset``: nothing is pinned.
    pinned: bool

    @classmethod
    def detect(cls) -> Cores:
        cores = tuple(sorted(os.sched_getaffinity(0)))
        if len(cores) < 2 or shutil.which("taskset") is None:
            return cls(cores, cores, False)
        # The measured process gets one core of its own, the receivers the rest.
        return cls(cores[:-1], cores[-1:], True)

    def _prefix(self, cores: tuple[int, ...]) -> list[str]:
        if not self.pinned:
            return []
        return ["taskset", "-c", ",".join(str(c) for c in cores)]

    def for_receiver(self) -> list[str]:
        return self._prefix(self.receiver)

    def for_client(self) -> list[str]:
        return self._prefix(self.client)

    def describe(self) -> str:
        if not self.pinned:
            return "not pinned (one CPU, or no taskset)"
        cpus = ",".join(str(c) for c in self.receiver)
        return f"receivers on CPU {cpus}, daemon and bare client on CPU {self.client[0]}"


class Processes:
    """The children of this benchmark, stopped by process group on ``stop``/``close``."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start ``argv`` with stdout and stderr appended to ``log``."""
        with open(log, "ab") as out:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                    cwd=cwd)
        self._running.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, log: Path, timeout_s: float,
            env: dict[str, str] | None = None) -> int | None:
        """Start ``argv`` and wait for it at most ``timeout_s``; None when it had to be stopped."""
        proc = self.start(argv, log=log, env=env)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.stop(proc)
            return None
        finally:
            self._forget(proc)

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             grace_s: float = STOP_GRACE_S) -> int | None:
        """Signal ``proc``'s process group, wait up to ``grace_s``, then kill it."""
        try:
            if proc.poll() is None:
                self._signal(proc, sig)
                try:
                    proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    self._signal(proc, signal.SIGKILL)
                    proc.wait(5.0)
        finally:
            self._forget(proc)
        return proc.returncode

    def close(self) -> None:
        """Stop every child still running, newest first."""
        for proc in reversed(list(self._running)):
            try:
                self.stop(proc, grace_s=5.0)
            except Exception:  # noqa: BLE001 - keep stopping the others
                pass

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
        # Only while the leader is alive (not reaped) is its pid surely still our group's id.
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass

    def _forget(self, proc: subprocess.Popen[bytes]) -> None:
        if proc in self._running and proc.poll() is not None:
            self._running.remove(proc)


def wait_for(check: Callable[[], object], timeout_s: float, interval_s: float = 0.05) -> bool:
    """Call ``check()`` until it is true or ``timeout_s`` passes; whether it became true."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
