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
                      "[delivery]\nallow_private_networks = true\ntimeout = 2.0\n")
    assert _cli(config, "init").returncode == 0
    created = _cli(config, "webhooks", "create", "--org", "org_a", "--name", "n", "--json",
                   "--url", f"https://127.0.0.1:{free_port()}/hook")
    assert created.returncode == 0, created.stderr
    webhook_id = orjson.loads(created.stdout)["id"]
    sent = _cli(config, "webhooks", "test", webhook_id, "--json")
    assert sent.returncode == 1 and orjson.loads(sent.stdout)["state"] == "failed"
    delivery = orjson.loads(sent.stdout)["delivery_id"]

    retried = _cli(config, "deliveries", "retry", delivery)
    assert retried.returncode == 0, retried.stderr
    assert "will be sent once it is enabled" in retried.stdout

    replayed = _cli(config, "webhooks", "replay", webhook_id, "--status", "failed")
    assert replayed.returncode == 0 and "requeued 0" in replayed.stdout
    assert "will be sent once it is enabled" in replayed.stdout
