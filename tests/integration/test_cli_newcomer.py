"""The command line as a newcomer meets it: real subprocesses of the installed command, a
real pseudo-terminal for what a person sees, real pipes for what a script sees.

Exit codes are held to the README's table: 0 done, 1 refused input or unknown id, 2 a bad
command line or config, 70 internal error, 130 interrupted.
"""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from nevent_dispatch import registry
from nevent_dispatch.config import load
from nevent_dispatch.store.sqlite import Store
from tests.conftest import one_line_error, usage_error

COMMAND = str(Path(sys.executable).with_name("nevent-dispatch"))
TIMEOUT_S = 60


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NEVENT_DISPATCH_CONFIG", "NO_COLOR", "NEVENT_DISPATCH_DEBUG")}
    env.update(extra)
    return env


def run(folder: Path, *args: str, stdin: str | None = None, **env: str
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COMMAND, *args], cwd=folder, capture_output=True, text=True,
                          input=stdin, env=_env(**env), timeout=TIMEOUT_S)


def ok(folder: Path, *args: str) -> str:
    result = run(folder, *args)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def in_terminal(folder: Path, *args: str, answer: str | None = None, **env: str
                ) -> tuple[int, str]:
    """Run a command on a real pseudo-terminal (stdin, stdout and stderr); its exit status
    and everything it wrote. ``answer`` is typed once the command asks something."""
    main, child = pty.openpty()
    process = subprocess.Popen([COMMAND, *args], cwd=folder, stdin=child, stdout=child,
                               stderr=child, env=_env(TERM="xterm", **env), close_fds=True)
    os.close(child)
    out = b""
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
                if answer is not None and b"[y/N]" in out:
                    os.write(main, answer.encode() + b"\n")
                    answer = None
            elif process.poll() is not None:
                break
        return process.wait(timeout=10), out.decode(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(main)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A project folder with initialised databases and a config allowing local receivers."""
    (tmp_path / "dev.toml").write_text(
        '[delivery]\nallow_http = true\nallow_private_networks = true\n'
        'retry_schedule = [30]\ntimeout = 2.0\n[api]\nlisten = ""\n', encoding="utf-8")
    ok(tmp_path, "--config", "dev.toml", "init")
    return tmp_path


def _config(folder: Path) -> Any:
    """dev.toml as the commands run in ``folder`` read it (the default ./var is theirs)."""
    config = load(folder / "dev.toml")
    return config.replace(database={"outbox": folder / config.database.outbox,
                                    "state": folder / config.database.state})


def _webhook(folder: Path, *extra: str, org: str = "org_a", port: int = 9) -> str:
    out = ok(folder, "--config", "dev.toml", "webhooks", "create", "--org", org, "--name", "n",
             "--url", f"http://127.0.0.1:{port}/hook", "--json", *extra)
    return str(orjson.loads(out)["id"])


def _write(database: Path, statement: str, rows: list[tuple[Any, ...]] | None = None) -> None:
    """One statement (for each of ``rows``) in one committed transaction, as another process
    would write it."""
    conn = sqlite3.connect(database)
    try:
        with conn:
            if rows is None:
                conn.execute(statement)
            else:
                conn.executemany(statement, rows)
    finally:
        conn.close()


def _unreadable_events(folder: Path, count: int) -> None:
    """``count`` outbox rows whose data is not JSON: each becomes a rejected delivery."""
    _write(_config(folder).database.outbox,
           "INSERT INTO outbox (type, organization_id, data) VALUES (?, ?, ?)",
           [("fan.created", "org_a", "not json")] * count)


def _rejected_history(folder: Path, count: int) -> None:
    """``count`` rejected deliveries, taken in by a run (no receiver needed)."""
    _unreadable_events(folder, count)
    ok(folder, "--config", "dev.toml", "run", "--until-idle")


# -- version, completion, exit codes ------------------------------------------------------------


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    from nevent_dispatch import __version__
    assert ok(tmp_path, "--version") == f"nevent-dispatch {__version__}\n"


def test_completion_code_and_the_completions_the_shell_gets(tmp_path: Path) -> None:
    """`completion bash` prints the hook; the hook's protocol completes verbs and options."""
    code = ok(tmp_path, "completion", "bash")
    assert "complete " in code and "nevent-dispatch" in code
    out = tmp_path / "completions"

    def complete(line: str) -> list[str]:
        result = run(tmp_path, _ARGCOMPLETE="1", _ARGCOMPLETE_SHELL="bash", COMP_LINE=line,
                     COMP_POINT=str(len(line)), _ARGCOMPLETE_IFS="\n",
                     ARGCOMPLETE_USE_TEMPFILES="1", _ARGCOMPLETE_STDOUT_FILENAME=str(out))
        assert result.returncode == 0, result.stderr
        return out.read_text().split()

    assert {"webhooks", "deliveries", "demo", "completion"} <= set(complete("nevent-dispatch "))
    assert set(complete("nevent-dispatch webhooks ")) >= {"create", "list", "delete", "test"}
    assert "--until-idle" in complete("nevent-dispatch run --")
    assert usage_error(run(tmp_path, "completion", "tcshx")).startswith("argument shell:")


def test_commands_outside_a_project_create_nothing_and_say_run_init(tmp_path: Path) -> None:
    """A folder with no databases: every reading command exits 1 with the hint; no ./var."""
    for args in (("webhooks", "list"), ("deliveries", "list"), ("emit", "fan.created", "--org",
                                                                  "org_a")):
        line = one_line_error(run(tmp_path, *args))
        assert "does not exist; run `" in line and "init` to create the databases" in line
    assert list(tmp_path.iterdir()) == []


def test_a_key_outside_any_table_is_a_config_error_saying_where_it_goes(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text("timeout = 5\n", encoding="utf-8")
    line = one_line_error(run(tmp_path, "--config", "c.toml", "webhooks", "list"), 2)
    assert line.startswith("nevent-dispatch: timeout: a key outside any table; it belongs "
                           "under [delivery]")


def test_paths_in_the_config_file_hold_from_any_folder(folder: Path) -> None:
    """NEVENT_DISPATCH_CONFIG given as an absolute path, databases named relative to it: the
    same state from a sub-folder."""
    (folder / "rel.toml").write_text('[database]\nstate = "data/s.db"\noutbox = "data/o.db"\n'
                                     '[api]\nlisten = ""\n', encoding="utf-8")
    ok(folder, "--config", "rel.toml", "init")
    sub = folder / "deep" / "er"
    sub.mkdir(parents=True)
    result = run(sub, "webhooks", "list", NEVENT_DISPATCH_CONFIG=str(folder / "rel.toml"))
    assert (result.returncode, result.stdout) == (0, "no webhooks\n"), result.stderr
    assert not (sub / "var").exists() and not (sub / "data").exists()


def test_unknown_ids_exit_1_and_bad_command_lines_exit_2(folder: Path) -> None:
    c = ("--config", "dev.toml")
    for args in (("webhooks", "show", "wh_0000000000000000"),
                 ("deliveries", "list", "--webhook", "wh_0000000000000000"),
                 ("deliveries", "show", "12345"), ("webhooks", "enable", "wh_0000000000000000")):
        assert "not found" in one_line_error(run(folder, *c, *args))
    for args in (("webhooks",), ("frobnicate",), ("deliveries", "list", "--limit", "x"),
                 ("listen", "--port", "99999"), ("emit",)):
        usage_error(run(folder, *c, *args))


# -- emit, update, test, replay --------------------------------------------------------------------


def test_emit_refuses_a_typo_and_warns_when_nobody_receives(folder: Path) -> None:
    c = ("--config", "dev.toml")
    line = one_line_error(run(folder, *c, "emit", "purchase.complete", "--org", "org_a"))
    assert line.endswith("(did you mean 'purchase.completed'?)")
    result = run(folder, *c, "emit", "purchase.completed", "--org", "org_a")
    assert result.returncode == 0
    assert result.stdout.startswith("emitted 1 purchase.completed for org_a (evt_")
    assert "warning: no active webhook of org_a receives purchase.completed" in result.stderr
    webhook = _webhook(folder)
    ok(folder, *c, "webhooks", "enable", webhook)
    result = run(folder, *c, "emit", "purchase.completed", "--org", "org_a")
    assert result.returncode == 0 and result.stderr == ""


@pytest.mark.parametrize(("off", "field"), [("--no-batch", "batch"), ("--no-retries", "retries")])
def test_update_with_only_an_off_switch_changes_it(folder: Path, off: str, field: str) -> None:
    on = {"batch": "--batch", "retries": "--retries"}[field]
    webhook = _webhook(folder, *(("--batch",) if field == "batch" else ()))
    c = ("--config", "dev.toml")
    if field == "retries":
        ok(folder, *c, "webhooks", "update", webhook, on)
    assert orjson.loads(ok(folder, *c, "webhooks", "show", webhook, "--json"))[field] is True
    assert ok(folder, *c, "webhooks", "update", webhook, off) == (
        f"updated webhook {webhook} (n): {field} changed\n")
    assert orjson.loads(ok(folder, *c, "webhooks", "show", webhook, "--json"))[field] is False
    assert "unchanged" in ok(folder, *c, "webhooks", "update", webhook, off)


def test_default_rate_limit_alone_clears_the_limit(folder: Path) -> None:
    c = ("--config", "dev.toml")
    webhook = _webhook(folder, "--rate-limit", "10")
    assert "rate_limit changed" in ok(folder, *c, "webhooks", "update", webhook,
                                      "--default-rate-limit")
    assert orjson.loads(ok(folder, *c, "webhooks", "show", webhook, "--json"))["rate_limit"] is None


def test_replay_says_when_nothing_was_requeued_and_when_no_daemon_runs(folder: Path) -> None:
    c = ("--config", "dev.toml")
    webhook = _webhook(folder)
    assert ok(folder, *c, "webhooks", "replay", webhook) == (
        f"no failed deliveries of {webhook}: nothing requeued\n")
    ok(folder, *c, "webhooks", "enable", webhook)
    ok(folder, *c, "emit", "fan.created", "--org", "org_a")
    # Port 9 refuses: one attempt, then the only retry is 30 s away; --max-wait ends the run.
    result = run(folder, *c, "run", "--until-idle", "--max-wait", "3s")
    assert result.returncode == 1
    assert "stopped waiting after 3s: 1 pending retry (next at 20" in result.stderr
    store_fail(folder)
    out = ok(folder, *c, "webhooks", "replay", webhook)
    assert out.startswith(f"requeued 1 failed deliveries of {webhook} (same delivery ids); "
                          "no daemon is running: they will be sent when `")
    assert out.rstrip().endswith("run` starts")


def store_fail(folder: Path) -> None:
    """End the pending retry as failed, as its last attempt would (the schedule's end)."""
    _write(_config(folder).database.state,
           "UPDATE deliveries SET state = 'failed', next_at = NULL WHERE state = 'pending'")


def test_run_until_idle_reports_what_it_waits_for(folder: Path) -> None:
    c = ("--config", "dev.toml")
    webhook = _webhook(folder)
    ok(folder, *c, "webhooks", "enable", webhook)
    ok(folder, *c, "emit", "fan.created", "--org", "org_a")
    result = run(folder, *c, "run", "--until-idle", "--max-wait", "7s")
    assert result.returncode == 1
    waits = [line for line in result.stderr.splitlines() if line.startswith("waiting for ")]
    assert waits and "1 pending retry (next at " in waits[0]
    assert "max-wait: expected" in one_line_error(
        run(folder, *c, "run", "--until-idle", "--max-wait", "soon"))
    line = one_line_error(run(folder, *c, "run", "--max-wait", "5s"))
    assert line == "nevent-dispatch: max-wait: only with --until-idle"


# -- delete confirmation ---------------------------------------------------------------------------


def test_delete_needs_yes_without_a_terminal_and_asks_on_one(folder: Path) -> None:
    c = ("--config", "dev.toml")
    webhook = _webhook(folder)
    line = one_line_error(run(folder, *c, "webhooks", "delete", webhook))
    assert line.endswith("is not deleted without --yes when stdin is not a terminal")
    status, out = in_terminal(folder, *c, "webhooks", "delete", webhook, answer="n")
    assert status == 1 and "[y/N]" in out and "kept" in out
    assert orjson.loads(ok(folder, *c, "webhooks", "show", webhook, "--json"))["id"] == webhook
    status, out = in_terminal(folder, *c, "webhooks", "delete", webhook, answer="y")
    assert status == 0 and f"deleted webhook {webhook}" in out
    other = _webhook(folder)
    assert ok(folder, *c, "webhooks", "delete", other, "--yes").startswith(
        f"deleted webhook {other}")


# -- terminals, colour and pipes ---------------------------------------------------------------


def test_colour_on_a_terminal_none_in_a_pipe_or_with_no_color(folder: Path) -> None:
    c = ("--config", "dev.toml")
    _rejected_history(folder, 3)
    status, out = in_terminal(folder, *c, "deliveries", "list")
    assert status == 0 and "\x1b[31mrejected" in out and "\x1b[1mID" in out
    status, out = in_terminal(folder, *c, "deliveries", "list", NO_COLOR="1")
    assert status == 0 and "rejected" in out and "\x1b[" not in out
    piped = ok(folder, *c, "deliveries", "list")
    assert "rejected" in piped and "\x1b[" not in piped


def test_daemon_logs_are_console_lines_on_a_terminal_and_json_in_a_pipe(folder: Path) -> None:
    c = ("--config", "dev.toml")
    _unreadable_events(folder, 1)
    status, out = in_terminal(folder, *c, "run", "--until-idle")
    assert status == 0
    assert "event_rejected" in out and "\x1b[" in out and '{"' not in out
    piped = run(folder, *c, "run", "--until-idle")
    first = piped.stdout.splitlines()[0]
    assert orjson.loads(first)["event"] and "\x1b[" not in piped.stdout


@pytest.mark.parametrize("listing", [("deliveries", "list", "--limit", "1000"),
                                     ("deliveries", "list", "--limit", "1000", "--json"),
                                     ("webhooks", "list"), ("webhooks", "list", "--json")])
def test_every_listing_ends_quietly_when_its_reader_goes(folder: Path,
                                                         listing: tuple[str, ...]) -> None:
    """`… | head -1`: far more output than a pipe holds, the reader gone after one line:
    exit 0, nothing on stderr."""
    if listing[0] == "deliveries":
        _rejected_history(folder, 1000)
    else:
        asyncio.run(_many_webhooks(folder, 600))
    script = f"{COMMAND!r} --config dev.toml {' '.join(listing)} | head -1; " \
             "echo \"status=${PIPESTATUS[0]}\""
    result = subprocess.run(["bash", "-c", script], cwd=folder, capture_output=True, text=True,
                            env=_env(), timeout=TIMEOUT_S)
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and lines[-1] == "status=0", result.stdout[-500:]
    assert result.stderr == ""


async def _many_webhooks(folder: Path, count: int) -> None:
    config = _config(folder)
    store = await Store.open(config)
    try:
        for i in range(count):
            await registry.create(store, config, organization_id="org_a",
                                  url=f"http://127.0.0.1:9/hook/{i}", name=f"webhook {i:04d}" * 4,
                                  now=time.time())
    finally:
        await store.close()


def test_since_takes_a_dashed_duration_with_a_space(folder: Path) -> None:
    _rejected_history(folder, 2)
    c = ("--config", "dev.toml")
    assert len(orjson.loads(ok(folder, *c, "deliveries", "list", "--since", "-1h", "--json"))) == 2
    future = str(int(time.time()) + 3600)
    assert orjson.loads(ok(folder, *c, "deliveries", "list", "--since", future, "--json")) == []


def test_list_footer_gives_the_next_page_and_filters_narrow(folder: Path) -> None:
    _rejected_history(folder, 5)
    c = ("--config", "dev.toml")
    first = run(folder, *c, "deliveries", "list", "--limit", "2")
    assert first.returncode == 0
    assert len(first.stdout.splitlines()) == 3  # header + 2
    cursor = first.stderr.split("--cursor ", 1)[1].split()[0]
    assert first.stderr.startswith("2 shown — --cursor ")
    second = orjson.loads(ok(folder, *c, "deliveries", "list", "--limit", "2", "--cursor", cursor,
                             "--json"))
    everything = orjson.loads(ok(folder, *c, "deliveries", "list", "--json"))
    assert [d["id"] for d in second] == [d["id"] for d in everything[2:4]]
    assert orjson.loads(ok(folder, *c, "deliveries", "list", "--org", "org_b", "--json")) == []
    event = everything[0]["event_id"]
    assert [d["event_id"] for d in orjson.loads(
        ok(folder, *c, "deliveries", "list", "--event", event, "--json"))] == [event]
    assert len(orjson.loads(ok(folder, *c, "deliveries", "list", "--type", "fan.created",
                               "--json"))) == 5


# -- demo --------------------------------------------------------------------------------------------


def _active_webhooks(folder: Path) -> list[dict[str, Any]]:
    listed = orjson.loads(ok(folder, "webhooks", "list", "--json"))
    return [w for w in listed if w["active"]]


@pytest.fixture
def demo_folder(tmp_path: Path) -> Path:
    return tmp_path


def test_demo_completes_beside_an_active_webhook_on_a_dead_port(demo_folder: Path) -> None:
    """The README's manual flow leaves an active webhook on a dead port; demo still ends, on
    its own organization, and leaves no webhook of its own."""
    ok(demo_folder, "init")
    asyncio.run(_dead_active_webhook(demo_folder))
    result = run(demo_folder, "demo", "--max-wait", "30s")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "delivered 17 of 17" in result.stdout
    assert [w["organization_id"] for w in _active_webhooks(demo_folder)] == ["org_demo"]


async def _dead_active_webhook(folder: Path) -> None:
    config = load(None).replace(
        delivery={"allow_http": True, "allow_private_networks": True},
        database={"outbox": folder / "var" / "nevent.db", "state": folder / "var" / "dispatch.db"})
    store = await Store.open(config)
    try:
        webhook, _ = await registry.create(store, config, organization_id="org_demo",
                                           url="http://127.0.0.1:9/webhooks/nevent", name="old",
                                           now=time.time())
        await registry.set_active(store, webhook.id, True, time.time())
    finally:
        await store.close()
    _write(config.database.outbox, "INSERT INTO outbox (type, organization_id, data) VALUES "
           "('fan.created', 'org_demo', '{}')")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_demo_interrupted_leaves_no_active_webhook(demo_folder: Path, signum: int) -> None:
    process = subprocess.Popen([COMMAND, "demo"], cwd=demo_folder, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "1. local receiver on …": the demo is under way
        assert line.startswith("1. local receiver on "), line
        process.send_signal(signum)
        out, err = process.communicate(timeout=TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, (out, err)
    assert f"demo: stopped by {signal.Signals(signum).name}" in err or "delivered 17" in out
    assert _active_webhooks(demo_folder) == []
