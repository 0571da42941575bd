"""The systemd notification protocol (sd_notify), written out: datagrams to $NOTIFY_SOCKET.

Owns the socket address (a path, or ``@name`` for Linux's abstract namespace), the
datagrams (``READY=1``, ``STATUS=…``, ``WATCHDOG=1``, ``STOPPING=1``: newline-separated
``KEY=value`` lines) and the watchdog interval (half of $WATCHDOG_USEC, when
$WATCHDOG_PID is unset or names this process). Sending never raises: a missing or full
socket is logged once and the daemon carries on. It must not decide what to say or when:
``ops/__init__.py`` does, from the health verdict.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from ..logs import get_logger

log = get_logger("nevent_dispatch")


def address(value: str) -> str | None:
    """$NOTIFY_SOCKET as a socket address: ``@name`` is abstract (a leading NUL byte)."""
    if value.startswith("@"):
        return "\0" + value[1:]
    return value if value.startswith("/") else None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between two ``WATCHDOG=1``: half the timeout systemd set, or None."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (owner and owner != str(pid)):
        return None
    return int(usec) / 2_000_000


class Notifier:
    """One AF_UNIX datagram socket to systemd's notification socket."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._failing = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier | None:
        target = address(environ.get("NOTIFY_SOCKET", ""))
        return None if target is None else cls(target)

    def send(self, **fields: str | int) -> bool:
        """One datagram of ``KEY=value`` lines (``send(READY=1, STATUS="…")``)."""
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(text.encode("utf-8", "replace"), self.target)
        except OSError as exc:
            if not self._failing:
                shown = "@" + self.target[1:] if self.target.startswith("\0") else self.target
                log.warning("notify_failed", socket=shown, error=str(exc))
            self._failing = True
            return False
        self._failing = False
        return True

    def close(self) -> None:
        self._sock.close()
