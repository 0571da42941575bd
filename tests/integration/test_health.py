"""Health of a real daemon: /readyz, and the systemd notifications on a real datagram socket.

Daemons are real ``nevent-dispatch run`` subprocesses; systemd's notification socket is a
real AF_UNIX datagram socket the test binds (a path, or an abstract ``@name``); the lock
on the state database is a second process holding ``BEGIN EXCLUSIVE``. Every process is
ended by its fixture or a ``finally``, even when the test fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from nevent_dispatch.config import Config

from ..conftest import Daemon, write_config
from ..reliability.core_support import wait_for
from .api_support import CLI_TIMEOUT_S, cli_env

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "nevent-dispatch.service"
#: The watchdog timeout given to the daemons: WATCHDOG=1 every half second.
WATCHDOG_USEC = 1_000_000
#: health.stall_after of these daemons.
STALL_S = 2

HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
conn.close()
print("released", flush=True)
"""


class NotifySocket:
    """systemd's side of sd_notify: a bound datagram socket; every message read is kept."""

    def __init__(self, abstract: bool) -> None:
        self._folder: str | None = None
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            self.env = f"@nevent-dispatch-test-{uuid.uuid4().hex}"
            self.sock.bind("\0" + self.env[1:])
        else:  # a short path: sun_path holds 108 bytes, pytest's folders can be longer
            self._folder = tempfile.mkdtemp(prefix="nd-", dir="/tmp")
            self.env = os.path.join(self._folder, "notify")
            self.sock.bind(self.env)
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def read(self) -> list[dict[str, str]]:
        """The messages that arrived since the last read (each as its KEY=value lines)."""
        new = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            new.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        self.messages.extend(new)
        return new

    def wait(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        """The next message carrying ``key``."""
        def found() -> dict[str, str] | None:
            return next((m for m in self.read() if key in m), None)
        return wait_for(found, timeout, f"a {key} notification")  # type: ignore[no-any-return]

    def close(self) -> None:
        self.sock.close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)


@pytest.fixture
def notify_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], NotifySocket]]:
    """Bind a notification socket and name it (with WATCHDOG_USEC) to the daemons started next."""
    made: list[NotifySocket] = []

    def factory(abstract: bool = False) -> NotifySocket:
        made.append(NotifySocket(abstract))
        monkeypatch.setenv("NOTIFY_SOCKET", made[-1].env)
        monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        return made[-1]

    yield factory
    for sock in made:
        sock.close()


class Holder:
    """A second process holding ``BEGIN EXCLUSIVE`` on a database until ``release``."""

    def __init__(self, path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "released"
        self.proc.wait(CLI_TIMEOUT_S)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@contextlib.contextmanager
def holding(path: Path) -> Iterator[Holder]:
    holder = Holder(path)
    try:
        yield holder
    finally:
        holder.kill()


def init(config_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "nevent_dispatch", "--config", str(config_path),
                             "init"], env=cli_env(), capture_output=True, text=True,
                            timeout=CLI_TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stderr


def line_of(daemon: Daemon, event: str, after: int = 0) -> dict[str, Any] | None:
    return next((line for line in daemon.log_lines()[after:] if line.get("event") == event), None)


def wait_line(daemon: Daemon, event: str, after: int = 0, timeout: float = 30.0) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        assert daemon.proc is not None and daemon.proc.poll() is None, \
            f"the daemon exited before {event}: {daemon.log_path.read_text()}"
        return line_of(daemon, event, after)
    return wait_for(found, timeout, f"the daemon's {event} line")  # type: ignore[no-any-return]


def readyz(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, orjson.loads(error.read())


def health_tables(listen: str) -> str:
    return f'[api]\nlisten = "{listen}"\n\n[health]\nstall_after = {STALL_S}\n'


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_a_daemon_without_api_tells_systemd_ready_status_watchdog_and_stopping(
        abstract: bool, make_config: Callable[..., Config], daemon: Callable[..., Daemon],
        notify_socket: Callable[[bool], NotifySocket]) -> None:
    """READY=1 once started, STATUS= lines, WATCHDOG=1 every half WATCHDOG_USEC, STOPPING=1
    on SIGTERM: the checks behind the watchdog run with api.listen = "" too."""
    sock = notify_socket(abstract)
    config = make_config()
    process = daemon(config, health_tables(""))
    ready = sock.wait("READY")
    assert ready["READY"] == "1"
    assert ready["STATUS"].startswith("backlog 0 events, "), ready
    assert ready["STATUS"].endswith("0 failing webhooks"), ready
    for _ in range(3):
        assert sock.wait("WATCHDOG")["WATCHDOG"] == "1"
    assert line_of(process, "api_listening") is None
    process.signal(15)
    stopping = sock.wait("STOPPING")
    assert stopping["STOPPING"] == "1"
    assert process.wait() == 0
    keys = [next(iter(m)) for m in sock.messages]
    assert keys.index("READY") < keys.index("WATCHDOG") < keys.index("STOPPING")
    assert "WATCHDOG" not in keys[keys.index("STOPPING"):]


def test_a_locked_state_database_makes_readyz_503_and_stops_the_watchdog_until_released(
        make_config: Callable[..., Config], daemon: Callable[..., Daemon], tmp_path: Path,
        notify_socket: Callable[[bool], NotifySocket]) -> None:
    """Locked before start: /readyz says starting (503) and no READY=1 until released. Locked
    while running, longer than health.stall_after: 503 stalled naming the state database, and
    no WATCHDOG=1 while it lasts; released, both come back."""
    sock = notify_socket(False)
    config = make_config()
    config_path = write_config(tmp_path / "init.toml", config, health_tables("127.0.0.1:0"))
    init(config_path)
    with holding(config.database.state) as holder:
        process = daemon(config, health_tables("127.0.0.1:0"))
        url = wait_line(process, "api_listening")["url"]
        status, body = readyz(url)
        assert (status, body["status"]) == (503, "starting"), body
        reasons = wait_for(lambda: readyz(url)[1]["reasons"], 30, "a reason to stay starting")
        assert any(r.startswith("state database: a write has waited") for r in reasons), reasons
        assert readyz(url)[1]["status"] == "starting"
        assert not [m for m in sock.read() if "READY" in m or "WATCHDOG" in m]
        holder.release()
    assert sock.wait("READY")["READY"] == "1"
    wait_for(lambda: readyz(url)[0] == 200, 30, "/readyz 200 once released")
    sock.wait("WATCHDOG")

    with holding(config.database.state) as holder:
        body = wait_for(lambda: (lambda r: r[0] == 503 and r[1])(readyz(url)), 30, "/readyz 503")
        assert body["status"] == "stalled", body
        assert any(r.startswith("state database: a write has waited") and
                   f"health.stall_after = {STALL_S}" in r for r in body["reasons"]), body
        sock.read()  # everything sent before the verdict that /readyz gave
        started = time.monotonic()
        # Several watchdog intervals under the same verdict: /readyz says stalled throughout.
        while time.monotonic() - started < 4 * WATCHDOG_USEC / 2e6:
            assert readyz(url)[0] == 503
            time.sleep(0.1)
        assert readyz(url)[0] == 503
        unfed = sock.read()
        assert not [m for m in unfed if "WATCHDOG" in m], unfed
        holder.release()
    wait_for(lambda: readyz(url)[0] == 200, 30, "/readyz 200 once released again")
    sock.wait("WATCHDOG")
    assert line_of(process, "health_stalled") is not None
    assert line_of(process, "health_recovered") is not None
    process.signal(15)
    sock.wait("STOPPING")
    assert process.wait() == 0


def test_the_systemd_unit_is_of_type_notify_with_a_watchdog() -> None:
    """The unit waits for READY=1, accepts notifications from the main process only, and
    restarts a daemon that stops feeding the watchdog."""
    keys = [line.strip() for line in UNIT.read_text(encoding="utf-8").splitlines()]
    assert "Type=notify" in keys
    assert "NotifyAccess=main" in keys
    assert any(k.startswith("WatchdogSec=") and k != "WatchdogSec=0" for k in keys)
    assert "Restart=on-failure" in keys
