"""Configuration: one frozen dataclass per TOML table, loaded once.

Owns the defaults (they live here and nowhere else), the TOML parsing and the
validation of every key. Errors name the dotted key and say what is wrong in
one line (``delivery.timeout: must be > 0, got 0``). It must not open
databases or sockets: the values it checks are values, not resources.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: Environment variable naming the config file when ``--config`` is absent.
CONFIG_ENV = "NEVENT_DISPATCH_CONFIG"


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    #: The application's database file holding the outbox table.
    outbox: Path = Path("var/nevent.db")
    #: The daemon's own database (webhooks, deliveries, attempts, cursor); may equal outbox.
    state: Path = Path("var/dispatch.db")
    #: Seconds a statement waits for another writer's lock before failing.
    busy_timeout: float = 5.0


@dataclass(frozen=True, slots=True)
class OutboxConfig:
    #: Seconds between two checks for new outbox rows (PRAGMA data_version).
    poll_interval: float = 0.005
    #: Longest wait between two checks when the outbox has been quiet: the check interval
    #: grows from poll_interval up to this while nothing new arrives (an idle daemon costs
    #: next to nothing), and drops back at the first new row.
    idle_poll_interval: float = 0.05
    #: Outbox rows read per page (one intake transaction); memory stays bounded by this
    #: and the lanes. Larger pages mean fewer commits while draining a backlog.
    page_size: int = 2000
    #: Bytes of event data read per page at most (a page holds at least one row).
    max_page_bytes: int = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    #: Seconds allowed for a whole attempt (connect, send, response).
    timeout: float = 10.0
    #: Seconds to wait before each retry; its length is the number of retries.
    retry_schedule: tuple[float, ...] = (60.0, 300.0, 1800.0, 7200.0, 21600.0)
    #: Largest envelope (or batch body) accepted, in bytes.
    max_payload_bytes: int = 1_048_576
    #: Accept http:// webhook URLs (local development only).
    allow_http: bool = False
    #: Accept destinations resolving to loopback, private, link-local or multicast addresses.
    allow_private_networks: bool = False
    #: Extra PEM bundle of trusted CAs, in addition to the system store.
    ca_file: Path | None = None
    #: Local address outgoing connections bind to (for customers' IP allow-lists).
    source_address: str | None = None
    #: Attempts in flight at once, all webhooks together.
    max_in_flight: int = 256
    #: Attempts in flight at once to one webhook.
    max_in_flight_per_webhook: int = 16
    #: Bytes of each response body kept in the history.
    response_snippet_bytes: int = 1024
    #: Seconds SIGTERM waits for in-flight attempts before cancelling them.
    shutdown_grace: float = 10.0


@dataclass(frozen=True, slots=True)
class BatchConfig:
    #: Most events in one batch request.
    max_events: int = 100
    #: Seconds a partial batch waits for more events before it is sent.
    max_wait: float = 1.0


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    #: Default per-webhook limit, events per minute (a batch counts each event).
    events_per_minute: int = 1000
    #: Bucket capacity: events a quiet webhook may receive at once before the rate applies.
    burst: int = 100


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    #: Bytes of event bodies all lanes together hold in memory, queued to be sent or waiting
    #: for a batch; beyond it work waits in the state database. Every webhook is granted at
    #: least this divided by twice the webhooks holding work. Attempts in flight
    #: add at most delivery.max_in_flight bodies, and an outbox page max_page_bytes.
    budget_bytes: int = 192 * 1024 * 1024
    #: Bytes of event bodies one webhook's lane holds in memory at most.
    lane_bytes: int = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class EventsConfig:
    #: Event types beyond the 17 documented ones that webhooks may subscribe to by name.
    extra_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LogConfig:
    #: "json" (one JSON object per line, for journald), "console" (for people, coloured on a
    #: terminal unless NO_COLOR is set), or "auto": console on a terminal, JSON otherwise.
    format: str = "auto"
    #: debug, info, warning or error.
    level: str = "info"


@dataclass(frozen=True, slots=True)
class ApiConfig:
    #: Where the management API listens: "HOST:PORT" (PORT 0 picks a free one),
    #: "unix:/path/api.sock", or "" for no API.
    listen: str = "127.0.0.1:8788"
    #: File of bearer tokens, one per line (# comments); default: "token" next to the
    #: state database. Re-read when it changes.
    token_file: Path | None = None
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = 65536
    #: Whether ``GET /metrics`` needs a bearer token like the other routes.
    metrics_token: bool = False


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    #: Count attempts, deliveries and batches for ``GET /metrics`` (Prometheus text).
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class HealthConfig:
    #: Seconds without progress (state database locked, intake not advancing over a
    #: backlog, scheduler not running) before /readyz answers 503 and the systemd
    #: watchdog is no longer fed.
    stall_after: float = 30.0


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    #: Finished deliveries (delivered, failed, rejected) older than this are pruned with
    #: their attempts and batch rows: a duration such as "30d", "12h"; "0" keeps all.
    deliveries: str = "30d"
    #: Outbox rows already fully handled and older than this are pruned by the daemon:
    #: "off" (the application prunes, see outbox_needed_from) or a duration such as "3d",
    #: no shorter than the retry horizon (retries re-read the outbox).
    outbox: str = "off"


@dataclass(frozen=True, slots=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    outbox: OutboxConfig = field(default_factory=OutboxConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    rate_limit: RateLimitConfig = field(default_factory=RateLimitConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)

    def replace(self, **tables: Any) -> Config:
        """A copy with whole tables or single keys swapped: ``replace(delivery={"timeout": 1})``."""
        changes = {}
        for name, value in tables.items():
            current = getattr(self, name)
            changes[name] = dataclasses.replace(current, **value) if isinstance(value, dict) else value
        return dataclasses.replace(self, **changes)


_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("auto", "json", "console")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(key: str, value: str, *, off: str | None = None) -> float | None:
    """A retention duration in seconds ("30d", "12h", "90m", "45s"; "0" is 0); ``off``
    names the word meaning "never" (then None)."""
    text = value.strip()
    if off is not None and text == off:
        return None
    if text == "0":
        return 0.0
    match = _DURATION.match(text)
    if not match:
        words = f'"{off}", ' if off else ""
        raise ConfigError(f"{key}: expected {words}\"0\" or a duration such as \"30d\", "
                          f"\"12h\", \"90m\", got {value!r}")
    return float(match[1]) * _DURATION_UNITS[match[2]]


def retry_horizon(config: Config) -> float:
    """Seconds from a delivery's first attempt to its last retry."""
    return sum(config.delivery.retry_schedule)


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond the range of a float
        return False


def _check(key: str, ok: bool, why: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: {why}, got {value!r}")


def _coerce(key: str, value: Any, default: Any, hint: str, base: Path | None = None) -> Any:
    """Turn one TOML value into the type of the dataclass field, or say why not; a relative
    path is taken relative to ``base`` (the config file's folder)."""
    if "Path" in hint:
        _check(key, isinstance(value, str), "must be a string path", value)
        if "None" in hint and value == "":
            return None
        _check(key, value != "", "must not be empty", value)
        _check(key, "\x00" not in value, "must not contain a NUL character", value)
        path = Path(value).expanduser()
        return path if base is None or path.is_absolute() else base / path
    if hint.startswith("tuple[float"):
        _check(key, isinstance(value, list), "must be a list of seconds", value)
        for item in value:
            _check(key, isinstance(item, int | float) and not isinstance(item, bool)
                   and _finite(item), "must be a list of finite numbers", value)
        return tuple(float(v) for v in value)
    if hint.startswith("tuple[str"):
        _check(key, isinstance(value, list) and all(isinstance(v, str) for v in value),
               "must be a list of strings", value)
        return tuple(value)
    if hint.startswith("str"):
        _check(key, isinstance(value, str), "must be a string", value)
        return None if ("None" in hint and value == "") else value
    if hint == "bool":
        _check(key, isinstance(value, bool), "must be true or false", value)
        return value
    if hint == "int":
        _check(key, isinstance(value, int) and not isinstance(value, bool), "must be an integer", value)
        return value
    if hint == "float":
        _check(key, isinstance(value, int | float) and not isinstance(value, bool)
               and _finite(value), "must be a finite number", value)
        return float(value)
    raise AssertionError(f"no coercion for {key} ({hint})")  # pragma: no cover - a bug


def from_dict(raw: dict[str, Any], base: Path | None = None) -> Config:
    """Build a validated Config from parsed TOML; unknown tables or keys are errors.
    Relative paths are taken relative to ``base`` when given (the config file's folder)."""
    tables: dict[str, Any] = {}
    known_tables = {f.name: f for f in dataclasses.fields(Config)}
    for table, values in raw.items():
        if table not in known_tables and not isinstance(values, dict):
            homes = [name for name, f in known_tables.items()
                     if table in {k.name for k in dataclasses.fields(f.default_factory)}]  # type: ignore[arg-type]
            where = (f"; it belongs under [{homes[0]}]: [{homes[0]}] {table} = ..." if homes
                     else f" (tables: {', '.join(known_tables)})")
            raise ConfigError(f"{table}: a key outside any table{where}")
        if table not in known_tables:
            raise ConfigError(f"{table}: unknown table (known: {', '.join(known_tables)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{table}: must be a table, got {values!r}")
        cls: Any = known_tables[table].default_factory
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            dotted = f"{table}.{key}"
            if key not in fields:
                raise ConfigError(f"{dotted}: unknown key (known: {', '.join(fields)})")
            kwargs[key] = _coerce(dotted, value, fields[key].default, str(fields[key].type), base)
        tables[table] = cls(**kwargs)
    config = Config(**tables)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Refuse impossible values, naming the key."""
    d = config.delivery
    _check("database.busy_timeout", config.database.busy_timeout >= 0, "must be >= 0",
           config.database.busy_timeout)
    _check("outbox.poll_interval", 0 < config.outbox.poll_interval <= 60, "must be > 0 and <= 60",
           config.outbox.poll_interval)
    _check("outbox.page_size", 1 <= config.outbox.page_size <= 100_000, "must be 1..100000",
           config.outbox.page_size)
    _check("outbox.idle_poll_interval",
           config.outbox.poll_interval <= config.outbox.idle_poll_interval <= 60,
           "must be >= outbox.poll_interval and <= 60", config.outbox.idle_poll_interval)
    _check("outbox.max_page_bytes", config.outbox.max_page_bytes >= 1024, "must be >= 1024",
           config.outbox.max_page_bytes)
    m = config.memory
    _check("memory.lane_bytes", m.lane_bytes >= 1024 * 1024, "must be >= 1048576", m.lane_bytes)
    _check("memory.budget_bytes", m.budget_bytes >= m.lane_bytes,
           "must be >= memory.lane_bytes", m.budget_bytes)
    _check("delivery.timeout", d.timeout > 0, "must be > 0", d.timeout)
    _check("delivery.retry_schedule", len(d.retry_schedule) <= 20, "must have at most 20 steps",
           list(d.retry_schedule))
    _check("delivery.retry_schedule", all(s >= 0 for s in d.retry_schedule),
           "must not contain negative delays", list(d.retry_schedule))
    _check("delivery.max_payload_bytes", 1024 <= d.max_payload_bytes <= 64 * 1024 * 1024,
           "must be between 1024 and 67108864", d.max_payload_bytes)
    _check("delivery.max_in_flight", d.max_in_flight >= 1, "must be >= 1", d.max_in_flight)
    _check("delivery.max_in_flight_per_webhook", d.max_in_flight_per_webhook >= 1, "must be >= 1",
           d.max_in_flight_per_webhook)
    _check("delivery.response_snippet_bytes", 0 <= d.response_snippet_bytes <= 65536,
           "must be 0..65536", d.response_snippet_bytes)
    _check("delivery.shutdown_grace", d.shutdown_grace >= 0, "must be >= 0", d.shutdown_grace)
    if d.ca_file is not None and not d.ca_file.is_file():
        raise ConfigError(f"delivery.ca_file: no such file, got {str(d.ca_file)!r}")
    _check("batch.max_events", 1 <= config.batch.max_events <= 1000, "must be 1..1000",
           config.batch.max_events)
    _check("batch.max_wait", 0 <= config.batch.max_wait <= 3600, "must be 0..3600",
           config.batch.max_wait)
    r = config.rate_limit
    _check("rate_limit.events_per_minute", 1 <= r.events_per_minute <= 10_000_000,
           "must be 1..10000000", r.events_per_minute)
    _check("rate_limit.burst", r.burst >= 1, "must be >= 1", r.burst)
    for name in config.events.extra_types:
        _check("events.extra_types", name.split() == [name] and "*" not in name,
               "must hold non-empty type names without spaces or '*'", name)
    _check("log.format", config.log.format in _LOG_FORMATS, "must be 'auto', 'json' or 'console'",
           config.log.format)
    _check("health.stall_after", 1 <= config.health.stall_after <= 3600, "must be 1..3600",
           config.health.stall_after)
    parse_duration("retention.deliveries", config.retention.deliveries)
    outbox_keep = parse_duration("retention.outbox", config.retention.outbox, off="off")
    if outbox_keep is not None and outbox_keep < retry_horizon(config):
        raise ConfigError(
            f"retention.outbox: must be \"off\" or at least the retry horizon "
            f"({retry_horizon(config):g} s, the sum of delivery.retry_schedule): retries "
            f"re-read the outbox, got {config.retention.outbox!r}")
    listen_problem = api_listen_problem(config.api.listen)
    if listen_problem:
        raise ConfigError(f"api.listen: {listen_problem}, got {config.api.listen!r}")
    _check("api.max_body_bytes", 1024 <= config.api.max_body_bytes <= 16 * 1024 * 1024,
           "must be 1024..16777216", config.api.max_body_bytes)
    _check("log.level", config.log.level in _LEVELS, f"must be one of {', '.join(_LEVELS)}",
           config.log.level)


def api_token_file(config: Config) -> Path:
    """The API's token file: ``api.token_file``, else ``token`` next to the state database."""
    return config.api.token_file or config.database.state.with_name("token")


def parse_listen(listen: str) -> tuple[str, int] | str:
    """``api.listen`` as (host, port), or the path of a Unix socket."""
    if listen.startswith("unix:"):
        return listen.removeprefix("unix:")
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("expected HOST:PORT, unix:/path or \"\" (off)")
    return host.strip("[]"), int(port)


def api_listen_problem(listen: str) -> str | None:
    if listen == "":
        return None
    try:
        where = parse_listen(listen)
    except ValueError as exc:
        return str(exc)
    if isinstance(where, str):
        return None if where.startswith("/") and "\x00" not in where else (
            "a unix socket needs an absolute path")
    host, port = where
    if not host:
        return "expected HOST:PORT (the host is missing)"
    return None if port <= 65535 else "port must be 0..65535"


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load ``path`` (or $NEVENT_DISPATCH_CONFIG); with neither, the embedded defaults.

    Paths written in the file (databases, token file, CA file) are relative to the
    file's folder, so the config means the same from any working directory; the
    defaults of keys it leaves out stay relative to the working directory (``./var``).
    """
    source = "--config"
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
        source = f"${CONFIG_ENV}"
    if path is None:
        return Config()
    where = os.path.abspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config: cannot read {where!r} (from {source}, cwd "
                          f"{os.getcwd()}): {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config: {where!r} is not UTF-8 text") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {where!r} is not valid TOML: {exc}") from None
    try:
        return from_dict(raw, Path(where).parent)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {where})") from None
