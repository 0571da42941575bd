"""The process shell: one daemon per state, SIGHUP drains, only `init` and `run` migrate.

Daemons are real ``nevent-dispatch run`` subprocesses (the ``daemon`` fixture
kills every one at the end of the test, even when it fails); other commands run
as real ``python -m nevent_dispatch`` subprocesses with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from nevent_dispatch import statelock
from nevent_dispatch.models import State

from ..conftest import Daemon, emit, free_port, one_line_error, write_config

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
UNIT = Path(__file__).resolve().parent.parent.parent / "systemd" / "nevent-dispatch.service"
#: The hint names the command as it was invoked (here `python -m nevent_dispatch`).
INIT_HINT = "run `python -m nevent_dispatch init`"


def _cli(*args: str, config_path: Path | None = None, cwd: Path,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m nevent_dispatch [--config PATH] ARGS…``, killed if it outlives ``timeout``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NEVENT_DISPATCH_CONFIG", "NEVENT_DISPATCH_DEBUG")}
    prefix = ("--config", str(config_path)) if config_path is not None else ()
    return subprocess.run([sys.executable, "-m", "nevent_dispatch", *prefix, *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)


def wait_for_event(process: Daemon, event: str, timeout: float = 30.0,
                   **fields: Any) -> dict[str, Any]:
    """The first log line of ``process`` with this event name and fields; fail if it exits first."""
    assert process.proc is not None
    deadline = time.monotonic() + timeout
    while True:
        exited = process.proc.poll() is not None  # read before the log: its last lines count
        for line in process.log_lines():
            if line.get("event") == event and all(line.get(k) == v for k, v in fields.items()):
                return line
        assert not exited, f"the daemon exited ({process.proc.returncode}) before {event}"
        assert time.monotonic() < deadline, f"no {event} line within {timeout} s"
        time.sleep(0.05)


def _dump(path: Path) -> tuple[int, list[str]]:
    conn = sqlite3.connect(path)
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        return int(version), list(conn.iterdump())
    finally:
        conn.close()


# -- one daemon per state --------------------------------------------------------------------


def test_a_second_run_on_the_same_state_exits_1_naming_the_first_and_a_kill_9_frees_it(
        make_config: Callable[..., Any], daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """The second `run` is refused at once with the holder's pid; after kill -9 a new one starts."""
    config = make_config()
    state = Path(config.database.state)
    first = daemon(config)
    assert first.proc is not None
    wait_for_event(first, "daemon_started", pid=first.proc.pid)

    second = _cli("run", "--until-idle", config_path=first.config_path, cwd=tmp_path, timeout=30)
    line = one_line_error(second)
    assert line == (f"nevent-dispatch: database.state: {state} is in use by another "
                    f"nevent-dispatch run (pid {first.proc.pid}; lock {state}.lock)")
    assert second.stdout == "", "it stopped before starting anything"
    assert first.proc.poll() is None, "the first daemon keeps running"

    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    lock = Path(f"{state}.lock")
    assert lock.read_text().strip() == str(first.proc.pid), "the dead daemon's file is left"

    third = daemon(config)
    assert third.proc is not None
    wait_for_event(third, "daemon_started", pid=third.proc.pid)  # the log is shared
    assert lock.read_text().strip() == str(third.proc.pid)
    third.signal(signal.SIGTERM)
    assert third.wait(30) == 0


def test_demo_refuses_a_state_a_daemon_holds(make_config: Callable[..., Any],
                                             daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """`demo` runs a dispatcher too: on the default ./var of a running daemon it exits 1."""
    config = make_config(database={"outbox": tmp_path / "var" / "nevent.db",
                                   "state": tmp_path / "var" / "dispatch.db"})
    process = daemon(config)
    assert process.proc is not None
    wait_for_event(process, "daemon_started")
    line = one_line_error(_cli("demo", cwd=tmp_path, timeout=30))
    assert f"is in use by another nevent-dispatch run (pid {process.proc.pid};" in line
    assert process.proc.poll() is None


def test_cli_commands_work_while_a_daemon_holds_the_lock(
        make_config: Callable[..., Any], daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """webhooks list/create/enable and deliveries list take no lock: they run beside the daemon."""
    config = make_config()
    process = daemon(config)
    wait_for_event(process, "daemon_started")
    path = process.config_path

    for args in (("webhooks", "list"), ("deliveries", "list")):
        result = _cli(*args, config_path=path, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr)
    created = _cli("webhooks", "create", "--org", "org_a", "--name", "beside the daemon", "--json",
                   "--url", f"https://127.0.0.1:{free_port()}/hook", config_path=path, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    webhook_id = orjson.loads(created.stdout)["id"]
    enabled = _cli("webhooks", "enable", webhook_id, config_path=path, cwd=tmp_path)
    assert enabled.returncode == 0, enabled.stderr
    listed = _cli("webhooks", "list", "--json", config_path=path, cwd=tmp_path)
    assert [(w["id"], w["active"]) for w in orjson.loads(listed.stdout)] == [(webhook_id, True)]
    assert process.proc is not None and process.proc.poll() is None


def test_the_state_lock_is_exclusive_private_and_released_on_exit(tmp_path: Path) -> None:
    """A second hold on the same state fails naming this pid; the file is 0600; release frees it."""
    state = tmp_path / "var" / "dispatch.db"
    old = os.umask(0o022)
    try:
        with statelock.hold(state) as path:
            assert path == Path(f"{state}.lock")
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert path.read_text() == f"{os.getpid()}\n"
            with pytest.raises(statelock.StateInUse,
                               match=re.escape(f"(pid {os.getpid()}; lock {path})")):
                with statelock.hold(state):
                    pass
        assert path.read_text() == "", "no pid is left naming a process that no longer holds it"
        with statelock.hold(state):
            pass
    finally:
        os.umask(old)
    assert not state.exists(), "the lock does not create the database"


# -- signals ---------------------------------------------------------------------------------


async def test_sighup_drains_like_sigterm_and_exits_0(
        store: Any, make_config: Callable[..., Any], make_receiver: Callable[..., Any],
        make_webhook: Callable[..., Any], daemon: Callable[..., Daemon]) -> None:
    """SIGHUP with an attempt in flight: it is finished and recorded, the drain is logged, exit 0."""
    config = make_config()
    receiver = await make_receiver(delay=1.0)
    webhook, _ = await make_webhook(store, receiver.url)
    process = daemon(config)
    await asyncio.to_thread(wait_for_event, process, "dispatcher_started")
    emit(config, [("fan.created", "org_a", {"n": 1})])
    deadline = time.monotonic() + 15
    while not receiver.requests:
        assert time.monotonic() < deadline, "the attempt never reached the receiver"
        await asyncio.sleep(0.02)

    process.signal(signal.SIGHUP)
    assert await asyncio.to_thread(process.wait, 30) == 0

    lines = process.log_lines()
    events = [line.get("event") for line in lines]
    [received] = [line for line in lines if line.get("event") == "signal_received"]
    assert (received["signal"], received["action"]) == ("SIGHUP", "drain")
    assert "dispatcher_stopped" in events and "daemon_stopped" in events
    assert events.index("signal_received") < events.index("dispatcher_stopped") \
        < events.index("daemon_stopped")
    [delivery] = await store.list_deliveries(webhook_id=webhook.id)
    assert (delivery.state, delivery.attempts) == (State.DELIVERED, 1)
    assert len(receiver.requests) == 1


# -- only init and run migrate ---------------------------------------------------------------


@pytest.mark.parametrize("command", [("deliveries", "list"), ("webhooks", "list"),
                                     ("emit", "fan.created", "--org", "org_a")])
def test_a_command_on_an_older_state_schema_is_refused_until_init(
        command: tuple[str, ...], make_config: Callable[..., Any], tmp_path: Path) -> None:
    """On a version-1 state database: one line saying to run init, exit 1, nothing changed."""
    state, outbox = tmp_path / "state.db", tmp_path / "app.db"
    shutil.copyfile(FIXTURES / "state_v1.db", state)
    shutil.copyfile(FIXTURES / "outbox_v1.db", outbox)
    path = write_config(tmp_path / "v1.toml", make_config(database={"state": state,
                                                                    "outbox": outbox}))
    state_before, outbox_before = _dump(state), _dump(outbox)
    assert state_before[0] == 1

    line = one_line_error(_cli(*command, config_path=path, cwd=tmp_path))
    assert INIT_HINT in line and "schema version 1" in line, line
    assert _dump(state) == state_before, "the state database is untouched"
    assert _dump(outbox) == outbox_before, "nothing was emitted"

    initialised = _cli("init", config_path=path, cwd=tmp_path)
    assert initialised.returncode == 0, initialised.stderr
    result = _cli(*command, config_path=path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", [("webhooks", "list"), ("deliveries", "list"),
                                     ("emit", "fan.created", "--org", "org_a")])
def test_a_command_without_a_state_database_says_to_run_init(command: tuple[str, ...],
                                                             tmp_path: Path) -> None:
    """In a folder never initialised (the default ./var): exit 1, one line naming `init`."""
    line = one_line_error(_cli(*command, cwd=tmp_path))
    assert INIT_HINT in line and "var/dispatch.db" in line, line
    assert _cli("init", cwd=tmp_path).returncode == 0
    result = _cli(*command, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# -- the systemd unit ------------------------------------------------------------------------


def test_the_systemd_unit_keeps_every_log_line_and_verifies(tmp_path: Path) -> None:
    """journald's rate limit is off for the unit; systemd-analyze accepts it (when installed)."""
    text = UNIT.read_text(encoding="utf-8")
    keys = [line.strip() for line in text.splitlines()]
    assert "LogRateLimitIntervalSec=0" in keys
    assert "KillSignal=SIGTERM" in keys
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        assert not os.environ.get("CI"), "systemd-analyze is missing in CI (.ci/run installs it)"
        return
    # The installed path does not exist here: point ExecStart at something executable.
    copy = tmp_path / UNIT.name
    copy.write_text("\n".join(f"ExecStart={sys.executable} -m nevent_dispatch run"
                              if line.startswith("ExecStart=") else line
                              for line in text.splitlines()) + "\n", encoding="utf-8")
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
