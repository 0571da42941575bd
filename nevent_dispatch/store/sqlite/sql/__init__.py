"""The SQL text of nevent-dispatch: named statements and schema migrations.

Owns the parsing of ``queries.sql`` into named statements and the ordered list
of schema files. It must not execute anything: ``store.py`` does (and
``publish.py`` runs the one application-side insert on the caller's
connection).
"""

from __future__ import annotations

from importlib import resources

_HERE = resources.files(__package__)


def _parse(text: str) -> dict[str, str]:
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("-- name: "):
            if name:
                queries[name] = "\n".join(lines).strip()
            name, lines = line.removeprefix("-- name: ").strip(), []
        elif name and not line.startswith("--"):
            lines.append(line)
    if name:
        queries[name] = "\n".join(lines).strip()
    return queries


#: Statement text by name.
QUERIES: dict[str, str] = _parse((_HERE / "queries.sql").read_text(encoding="utf-8"))

#: The outbox table, created idempotently in the application's database.
OUTBOX_SCHEMA: str = (_HERE / "outbox.sql").read_text(encoding="utf-8")

#: State schema migrations: entry i takes ``PRAGMA user_version`` from i to i + 1.
STATE_MIGRATIONS: tuple[str, ...] = tuple(
    (_HERE / f"state_v{n}.sql").read_text(encoding="utf-8") for n in (1, 2, 3, 4, 5)
)

#: The insert the application runs, as the outbox contract states it.
PUBLISH = "INSERT INTO outbox (type, organization_id, data) VALUES (?, ?, ?)"
