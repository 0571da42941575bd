"""`nevent-dispatch init` and `webhooks …` through a real subprocess on temporary databases."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from nevent_dispatch.store.sqlite import SCHEMA_VERSION

from ..conftest import one_line_error

Cli = Callable[..., subprocess.CompletedProcess[str]]

URL = "https://127.0.0.1:9/hook"  # accepted by allow_private_networks, never contacted


def _run(args: tuple[str, ...], cwd: Path, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("NEVENT_DISPATCH_CONFIG", "NEVENT_DISPATCH_DEBUG")}
    return subprocess.run([sys.executable, "-m", "nevent_dispatch", *args], cwd=cwd,
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "dispatch.toml"
    path.write_text(
        f'[database]\noutbox = "{tmp_path / "app.db"}"\nstate = "{tmp_path / "state.db"}"\n'
        "[delivery]\nallow_private_networks = true\n", encoding="utf-8")
    return path


@pytest.fixture
def cli(tmp_path: Path, config_path: Path) -> Cli:
    """Run `python -m nevent_dispatch --config <tmp config> ARGS…` on initialised databases."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return _run(("--config", str(config_path), *args), tmp_path, env)

    initialised = run("init")
    assert initialised.returncode == 0, initialised.stderr
    return run


@pytest.fixture
def raw_cli(tmp_path: Path) -> Cli:
    """Run `python -m nevent_dispatch ARGS…` with no --config."""

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return _run(args, tmp_path, env)

    return run


def _create(cli: Cli, *extra: str, org: str = "org_1", name: str = "Mi CRM") -> dict[str, Any]:
    result = cli("webhooks", "create", "--org", org, "--url", URL, "--name", name, "--json", *extra)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)  # type: ignore[no-any-return]


def _show(cli: Cli, webhook_id: str) -> dict[str, Any]:
    result = cli("webhooks", "show", webhook_id, "--json")
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)  # type: ignore[no-any-return]


# -- help and init ---------------------------------------------------------------------------


def test_help_works_through_python_dash_m(raw_cli: Cli) -> None:
    """`python -m nevent_dispatch --help` lists the commands and exits 0."""
    result = raw_cli("--help")
    assert result.returncode == 0
    assert "usage: nevent-dispatch" in result.stdout
    assert "webhooks" in result.stdout and "init" in result.stdout


def test_init_creates_both_databases_and_is_idempotent(tmp_path: Path, config_path: Path,
                                                       raw_cli: Cli) -> None:
    """init twice succeeds both times; --config is accepted after the command too. The
    first creates the API's token file (mode 0600, one token), the second keeps it."""
    outputs = []
    for _ in range(2):
        result = raw_cli("init", "--config", str(config_path))
        assert result.returncode == 0, result.stderr
        first, second = result.stdout.strip().splitlines()
        assert first == (
            f"initialised outbox {tmp_path / 'app.db'} and state {tmp_path / 'state.db'} "
            f"(schema v{SCHEMA_VERSION})")
        outputs.append(second)
    assert (tmp_path / "app.db").is_file() and (tmp_path / "state.db").is_file()
    token_file = tmp_path / "token"
    assert outputs[0].startswith(f"created the management API's token file {token_file} ")
    assert outputs[1] == f"management API tokens: {token_file} (kept as it is)"
    assert token_file.stat().st_mode & 0o777 == 0o600
    tokens = [line for line in token_file.read_text().splitlines()
              if line and not line.startswith("#")]
    assert len(tokens) == 1 and tokens[0].startswith("ndapi_") and len(tokens[0]) > 40
    assert tokens[0] not in outputs[0]  # never echoed


def test_config_is_taken_from_the_environment_variable(tmp_path: Path, config_path: Path,
                                                       raw_cli: Cli) -> None:
    """Without --config, $NEVENT_DISPATCH_CONFIG names the file."""
    result = raw_cli("init", env={"NEVENT_DISPATCH_CONFIG": str(config_path)})
    assert result.returncode == 0, result.stderr
    assert str(tmp_path / "state.db") in result.stdout


# -- create, show, list ----------------------------------------------------------------------


def test_create_shows_the_generated_secret_once_and_starts_inactive(cli: Cli) -> None:
    """The text output gives the id and the secret once; show and list never print the secret."""
    result = cli("webhooks", "create", "--org", "org_1", "--url", URL, "--name", "Mi CRM",
                 "--events", "purchase.*,fan.created")
    assert result.returncode == 0, result.stderr
    id_match = re.search(r"\bwh_[0-9a-f]{16}\b", result.stdout)
    secret_match = re.search(r"secret: (whsec_\S+) \(shown once: store it now\)", result.stdout)
    assert id_match and secret_match, result.stdout
    webhook_id, secret = id_match.group(), secret_match.group(1)
    assert result.stdout.count(secret) == 1
    assert "inactive" in result.stdout
    assert f"webhooks enable {webhook_id}" in result.stdout

    shown = cli("webhooks", "show", webhook_id)
    assert shown.returncode == 0, shown.stderr
    assert secret not in shown.stdout
    assert re.search(r"^secret:\s+whsec_\S{3}…\*{4}$", shown.stdout, re.M)
    assert re.search(r"^active:\s+no$", shown.stdout, re.M)
    assert re.search(r"^events:\s+purchase\.\*, fan\.created$", shown.stdout, re.M)

    listed = cli("webhooks", "list", "--json")
    assert secret not in listed.stdout
    [item] = orjson.loads(listed.stdout)
    assert item["id"] == webhook_id and item["active"] is False


def test_create_json_has_the_masked_secret_and_the_generated_one_apart(cli: Cli) -> None:
    """--json gives the webhook with its secret masked, plus generated_secret when generated."""
    generated = _create(cli)
    assert generated["generated_secret"].startswith("whsec_")
    assert generated["secret"] != generated["generated_secret"]
    assert generated["generated_secret"] not in generated["secret"]
    assert generated["active"] is False
    assert generated["events"] == ["*"]
    assert (generated["batch"], generated["retries"]) == (False, True)
    assert generated["rate_limit"] is None

    given = _create(cli, "--secret", "my-own-secret-of-32-characters!!", "--batch", "--no-retries",
                    "--rate-limit", "120", "--filter", '{"data.purchase.total": {"$gt": 100}}')
    assert "generated_secret" not in given
    assert "my-own-secret-of-32-characters!!" not in orjson.dumps(given).decode()
    assert (given["batch"], given["retries"], given["rate_limit"]) == (True, False, 120)
    assert given["filter"] == {"data.purchase.total": {"$gt": 100}}


def test_list_shows_aligned_columns_and_filters_by_organization(cli: Cli) -> None:
    """The text list has a header and one aligned row per webhook; --org narrows it."""
    first = _create(cli, org="org_1", name="CRM")
    second = _create(cli, "--batch", org="org_2", name="Data warehouse")

    result = cli("webhooks", "list")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "ORG", "ACTIVE", "BATCH", "EVENTS", "URL", "NAME"]
    assert [row.split()[:5] for row in rows] == [
        [first["id"], "org_1", "no", "no", "*"], [second["id"], "org_2", "no", "yes", "*"]]
    assert {header.index("URL")} == {row.index(URL) for row in rows}

    only = cli("webhooks", "list", "--org", "org_2", "--json")
    assert [w["id"] for w in orjson.loads(only.stdout)] == [second["id"]]


# -- update, enable, disable, delete ----------------------------------------------------------


def test_update_changes_only_the_given_fields(cli: Cli) -> None:
    """update sets and clears fields; what was not given is kept."""
    created = _create(cli, "--rate-limit", "50")
    result = cli("webhooks", "update", created["id"], "--url", "https://127.0.0.1:9/other",
                 "--name", "Renamed", "--events", "email.*", "--filter", '{"data.vip": true}',
                 "--batch", "--no-retries")
    assert result.returncode == 0, result.stderr
    assert "url, name, events, filter, batch, retries changed" in result.stdout
    updated = _show(cli, created["id"])
    assert updated["url"] == "https://127.0.0.1:9/other"
    assert (updated["name"], updated["events"], updated["filter"]) == (
        "Renamed", ["email.*"], {"data.vip": True})
    assert (updated["batch"], updated["retries"], updated["rate_limit"]) == (True, False, 50)
    assert updated["created_at"] == created["created_at"]

    result = cli("webhooks", "update", created["id"], "--no-filter", "--default-rate-limit",
                 "--no-batch", "--json")
    assert result.returncode == 0, result.stderr
    cleared = orjson.loads(result.stdout)
    assert (cleared["filter"], cleared["rate_limit"], cleared["batch"]) == (None, None, False)
    assert cleared["name"] == "Renamed"


def test_enable_disable_and_delete_say_what_they_did(cli: Cli) -> None:
    """enable and disable flip active; delete removes the webhook, after which it is unknown."""
    webhook_id = _create(cli)["id"]

    enabled = cli("webhooks", "enable", webhook_id)
    assert enabled.returncode == 0, enabled.stderr
    assert enabled.stdout.startswith(f"enabled webhook {webhook_id}")
    assert _show(cli, webhook_id)["active"] is True

    disabled = cli("webhooks", "disable", webhook_id)
    assert disabled.returncode == 0, disabled.stderr
    assert disabled.stdout.startswith(f"disabled webhook {webhook_id}")

    deleted = cli("webhooks", "delete", webhook_id, "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.startswith(f"deleted webhook {webhook_id}")
    line = one_line_error(cli("webhooks", "show", webhook_id), 1)
    assert line == f"nevent-dispatch: webhook {webhook_id!r} not found"


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "message"), [
    (("--url", "http://127.0.0.1:9/hook"),
     "nevent-dispatch: url: must be https:// "
     "(set delivery.allow_http = true for local development)"),
    (("--url", URL, "--events", "purchase.complete"),
     "nevent-dispatch: events: unknown event type 'purchase.complete' "
     "(did you mean 'purchase.completed'?)"),
    (("--url", URL, "--filter", "{not json"), "nevent-dispatch: filter: not valid JSON"),
    (("--url", URL, "--rate-limit", "999999999"),
     "nevent-dispatch: rate_limit: must be an integer from 1 to 10000000 events per minute"),
])
def test_bad_webhook_input_is_refused_in_one_line(cli: Cli, extra: tuple[str, ...],
                                                  message: str) -> None:
    """Refused input exits 1 with one line on stderr saying what is wrong, and saves nothing."""
    result = cli("webhooks", "create", "--org", "org_1", "--name", "n", *extra)
    assert one_line_error(result, 1).startswith(message)
    assert result.stdout == ""


def test_unknown_webhook_id_exits_1(cli: Cli) -> None:
    """Changing a webhook that does not exist is a one-line error."""
    line = one_line_error(cli("webhooks", "enable", "wh_0000000000000000"), 1)
    assert line == "nevent-dispatch: webhook 'wh_0000000000000000' not found"


def test_update_without_any_change_is_refused(cli: Cli) -> None:
    """An update that names no field says what it expects."""
    line = one_line_error(cli("webhooks", "update", "wh_0000000000000000"), 1)
    assert "nothing to change" in line


def test_bad_config_key_exits_2_naming_the_key(tmp_path: Path, raw_cli: Cli) -> None:
    """A misspelt key is a one-line error naming it, not a traceback."""
    path = tmp_path / "bad.toml"
    path.write_text("[delivery]\ntimout = 5\n", encoding="utf-8")
    line = one_line_error(raw_cli("--config", str(path), "webhooks", "list"), 2)
    assert line.startswith("nevent-dispatch: delivery.timout: unknown key")


def test_missing_config_file_exits_2(tmp_path: Path, raw_cli: Cli) -> None:
    """--config naming a file that does not exist is a one-line error."""
    missing = tmp_path / "nope.toml"
    line = one_line_error(raw_cli("--config", str(missing), "init"), 2)
    assert line.startswith(f"nevent-dispatch: config: cannot read {str(missing)!r} (from --config")
    assert line.endswith(": No such file or directory")


def test_missing_required_option_is_a_usage_error(cli: Cli) -> None:
    """argparse refuses an incomplete command with exit 2 and a usage line."""
    result = cli("webhooks", "create", "--url", URL, "--name", "n")
    assert result.returncode == 2
    assert "--org" in result.stderr
    assert "Traceback" not in result.stderr
