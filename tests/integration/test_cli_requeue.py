"""Requeueing from the CLI says when the work will really go out."""

from __future__ import annotations

import subprocess
import sys

import orjson

from ..conftest import free_port


def _cli(config_path, *args):
    return subprocess.run([sys.executable, "-m", "nevent_dispatch", "--config", str(config_path),
                           *args], capture_output=True, text=True, timeout=60)


def test_retry_on_a_disabled_webhook_says_it_waits_for_enable(tmp_path):
    """A failed delivery of an inactive webhook is requeued, and the CLI says it waits."""
    config = tmp_path / "c.toml"
    config.write_text(f'[database]\noutbox = "{tmp_path}/a.db"\nstate = "{tmp_path}/s.db"\n'
                      "[delivery]\nallow_private_networks = true\ntimeout = 2.0\n"
                      "retry_schedule = []\n[api]\nlisten = \"\"\n")
    assert _cli(config, "init").returncode == 0
    created = _cli(config, "webhooks", "create", "--org", "org_a", "--name", "n", "--json",
                   "--url", f"https://127.0.0.1:{free_port()}/hook")
    assert created.returncode == 0, created.stderr
    webhook_id = orjson.loads(created.stdout)["id"]
    assert _cli(config, "webhooks", "enable", webhook_id).returncode == 0
    assert _cli(config, "emit", "purchase.completed", "--org", "org_a").returncode == 0
    ran = _cli(config, "run", "--until-idle")  # nobody listens: one attempt, failed
    assert ran.returncode == 0, ran.stderr
    assert _cli(config, "webhooks", "disable", webhook_id).returncode == 0
    [failed] = orjson.loads(_cli(config, "deliveries", "list", "--json").stdout)
    assert (failed["state"], failed["kind"]) == ("failed", "event")

    retried = _cli(config, "deliveries", "retry", failed["delivery_id"])
    assert retried.returncode == 0, retried.stderr
    assert "will be sent once it is enabled" in retried.stdout

    replayed = _cli(config, "webhooks", "replay", webhook_id, "--status", "failed")
    assert replayed.returncode == 0 and "nothing requeued" in replayed.stdout


def test_a_test_send_is_never_retried(tmp_path):
    """A test delivery is one probe: retrying it is refused (409 over the API), not requeued
    as if it were an event."""
    config = tmp_path / "c.toml"
    config.write_text(f'[database]\noutbox = "{tmp_path}/a.db"\nstate = "{tmp_path}/s.db"\n'
                      "[delivery]\nallow_private_networks = true\ntimeout = 2.0\n")
    assert _cli(config, "init").returncode == 0
    created = _cli(config, "webhooks", "create", "--org", "org_a", "--name", "n", "--json",
                   "--url", f"https://127.0.0.1:{free_port()}/hook")
    webhook_id = orjson.loads(created.stdout)["id"]
    sent = _cli(config, "webhooks", "test", webhook_id, "--json")
    assert sent.returncode == 1 and orjson.loads(sent.stdout)["state"] == "failed"
    retried = _cli(config, "deliveries", "retry", orjson.loads(sent.stdout)["delivery_id"])
    assert retried.returncode == 1
    assert "is a test send: tests are not sent again" in retried.stderr
    [still] = orjson.loads(_cli(config, "deliveries", "list", "--json").stdout)
    assert still["state"] == "failed"
