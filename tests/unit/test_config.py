"""Configuration: embedded defaults, and one-line errors that name the key."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from nevent_dispatch import config as config_module
from nevent_dispatch.config import CONFIG_ENV, Config, from_dict, load
from nevent_dispatch.errors import ConfigError

WriteConfig = Callable[[str], Path]


@pytest.fixture(autouse=True)
def _no_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CONFIG_ENV, raising=False)


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write TOML text to a file and return its path."""

    def write(text: str) -> Path:
        path = tmp_path / "dispatch.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


def test_no_path_and_no_environment_gives_the_embedded_defaults() -> None:
    """With neither --config nor $NEVENT_DISPATCH_CONFIG the defaults apply, files under ./var."""
    config = load()
    assert config == Config()
    assert config.database.outbox == Path("var/nevent.db")
    assert config.database.state == Path("var/dispatch.db")
    assert config.delivery.timeout == 10.0
    assert config.delivery.retry_schedule == (60.0, 300.0, 1800.0, 7200.0, 21600.0)
    assert config.delivery.max_payload_bytes == 1_048_576
    assert config.delivery.allow_http is False
    assert config.delivery.allow_private_networks is False
    assert config.batch.max_events == 100
    assert config.rate_limit.events_per_minute == 1000
    assert config.events.extra_types == ()


def test_empty_file_gives_the_embedded_defaults(write_config: WriteConfig) -> None:
    """Every key is optional."""
    assert load(write_config("")) == Config()


def test_environment_variable_names_the_file_when_no_path_is_given(
        write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """$NEVENT_DISPATCH_CONFIG is read when load() gets no path."""
    path = write_config("[delivery]\ntimeout = 3\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert load().delivery.timeout == 3.0


def test_values_are_coerced_to_the_field_types(write_config: WriteConfig) -> None:
    """Integers become floats where seconds are floats, lists become tuples, strings paths."""
    config = load(write_config(
        '[database]\noutbox = "/srv/app.db"\n'
        "[delivery]\ntimeout = 5\nretry_schedule = [1, 2.5]\nallow_http = true\n"
        'source_address = ""\n'
        '[events]\nextra_types = ["ticket.scanned"]\n'))
    assert config.database.outbox == Path("/srv/app.db")
    assert config.delivery.timeout == 5.0 and isinstance(config.delivery.timeout, float)
    assert config.delivery.retry_schedule == (1.0, 2.5)
    assert config.delivery.allow_http is True
    assert config.delivery.source_address is None
    assert config.events.extra_types == ("ticket.scanned",)


@pytest.mark.parametrize(("toml", "message"), [
    ("[bogus]\nx = 1\n", "bogus: unknown table (known: database, outbox, delivery"),
    ("delivery = 5\n", "delivery: must be a table, got 5"),
    ("[delivery]\ntimeout_s = 1\n", "delivery.timeout_s: unknown key (known: timeout,"),
    ('[delivery]\ntimeout = "10"\n', "delivery.timeout: must be a finite number, got '10'"),
    ("[delivery]\nallow_http = 1\n", "delivery.allow_http: must be true or false, got 1"),
    ("[outbox]\npage_size = 1.5\n", "outbox.page_size: must be an integer, got 1.5"),
    ("[outbox]\npage_size = true\n", "outbox.page_size: must be an integer, got True"),
    ('[delivery]\nretry_schedule = ["1m"]\n', "delivery.retry_schedule: must be a list of finite numbers"),
    ("[events]\nextra_types = [1]\n", "events.extra_types: must be a list of strings"),
    ('[database]\nstate = ""\n', "database.state: must not be empty"),
    ("[delivery]\ntimeout = 0\n", "delivery.timeout: must be > 0, got 0.0"),
    ("[delivery]\nretry_schedule = [60, -1]\n",
     "delivery.retry_schedule: must not contain negative delays"),
    ("[delivery]\nmax_payload_bytes = 10\n", "delivery.max_payload_bytes: must be between 1024"),
    ('[delivery]\nca_file = "/nonexistent/ca.pem"\n', "delivery.ca_file: no such file"),
    ("[batch]\nmax_events = 0\n", "batch.max_events: must be 1..1000, got 0"),
    ("[rate_limit]\nevents_per_minute = 0\n", "rate_limit.events_per_minute: must be 1..10000000"),
    ('[events]\nextra_types = ["bad type"]\n',
     "events.extra_types: must hold non-empty type names"),
    ('[log]\nformat = "xml"\n', "log.format: must be 'auto', 'json' or 'console', got 'xml'"),
    ('[log]\nlevel = "loud"\n', "log.level: must be one of debug, info, warning, error"),
    ("[health]\nstall_after = 0\n", "health.stall_after: must be 1..3600, got 0.0"),
    ('[retention]\ndeliveries = "30 days"\n',
     'retention.deliveries: expected "0" or a duration such as "30d"'),
    ('[retention]\ndeliveries = "off"\n', "retention.deliveries: expected \"0\" or a duration"),
    ('[retention]\noutbox = "1h"\n',
     'retention.outbox: must be "off" or at least the retry horizon (30960 s'),
    ('[retention]\noutbox = "-3d"\n', 'retention.outbox: expected "off", "0" or a duration'),
])
def test_each_config_error_is_one_line_naming_the_key(write_config: WriteConfig, toml: str,
                                                      message: str) -> None:
    """Unknown tables and keys, wrong types and impossible values name the dotted key."""
    with pytest.raises(ConfigError) as info:
        load(write_config(toml))
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_unreadable_file_is_a_one_line_error_naming_the_path(tmp_path: Path) -> None:
    """A missing config file names the path and the reason."""
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load(missing)
    assert str(info.value) == (f"config: cannot read {str(missing)!r} (from --config, cwd "
                               f"{os.getcwd()}): No such file or directory")


def test_directory_instead_of_a_file_is_a_one_line_error(tmp_path: Path) -> None:
    """A path that cannot be read as a file is refused in one line."""
    with pytest.raises(ConfigError, match="^config: cannot read") as info:
        load(tmp_path)
    assert "\n" not in str(info.value)


def test_invalid_toml_is_a_one_line_error_with_the_position(write_config: WriteConfig) -> None:
    """A TOML syntax error names the file and where the parser stopped."""
    path = write_config("[delivery]\ntimeout = = 3\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"config: {str(path)!r} is not valid TOML: ")
    assert "line 2" in message
    assert "\n" not in message


def test_non_utf8_file_is_a_one_line_error(tmp_path: Path) -> None:
    """A config file that is not UTF-8 text is refused in one line."""
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[log]\nformat = "\xe9"\n')
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load(path)


def test_replace_swaps_single_keys_and_keeps_the_rest() -> None:
    """Config.replace changes the named keys of a table and nothing else."""
    config = Config().replace(delivery={"timeout": 1.0}, batch={"max_events": 10})
    assert config.delivery.timeout == 1.0
    assert config.delivery.retry_schedule == Config().delivery.retry_schedule
    assert config.batch.max_events == 10
    assert config.outbox == Config().outbox


def test_defaults_pass_their_own_validation() -> None:
    """The embedded defaults are a valid configuration."""
    config_module.validate(Config())
    assert from_dict({}) == Config()


def test_retention_durations_parse_to_seconds(write_config: WriteConfig) -> None:
    """"30d" is 30 days, "off" is never; an outbox retention at the retry horizon is allowed."""
    from nevent_dispatch.config import parse_duration
    assert parse_duration("k", "30d") == 30 * 86400
    assert parse_duration("k", "90m") == 5400
    assert parse_duration("k", "0") == 0
    assert parse_duration("k", "off", off="off") is None
    config = load(write_config('[retention]\noutbox = "1d"\n[delivery]\nretry_schedule = [60]\n'))
    assert config.retention.outbox == "1d"
    assert load(write_config("")).log.format == "auto"


def test_paths_in_a_config_file_are_relative_to_its_folder(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A config means the same from any working directory; left-out keys keep ./var."""
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "dev.toml").write_text('[database]\nstate = "data/state.db"\n'
                                     'outbox = "/abs/nevent.db"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load(folder / "dev.toml")
    assert config.database.state == folder / "data" / "state.db"
    assert config.database.outbox == Path("/abs/nevent.db")
    assert load(folder / "dev.toml").api.token_file is None
    (folder / "other.toml").write_text("[log]\nlevel = \"debug\"\n")
    assert load(folder / "other.toml").database.state == Path("var/dispatch.db")


def test_a_key_outside_any_table_says_where_it_belongs(write_config: WriteConfig) -> None:
    with pytest.raises(ConfigError) as info:
        load(write_config("timeout = 5\n"))
    assert str(info.value).startswith(
        "timeout: a key outside any table; it belongs under [delivery]: [delivery] timeout = ...")
    with pytest.raises(ConfigError) as info:
        load(write_config("nonsense = 5\n"))
    assert str(info.value).startswith("nonsense: a key outside any table (tables: database,")
