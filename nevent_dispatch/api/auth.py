"""Who may call the management API: bearer tokens read from the token file.

Owns the token file: its format (one token per line, ``#`` comments, blank lines
ignored), its creation by ``init`` (one generated token, mode 0600), and its re-reading
when it changes (checked at most once a second, by modification time, size and inode),
so that a token is revoked by deleting its line, without a restart. Tokens are compared
in constant time and never logged or echoed. It must not know routes.
"""

from __future__ import annotations

import hmac
import os
import secrets
import time
from pathlib import Path

from ..logs import get_logger

log = get_logger("nevent_dispatch")

#: Prefix of generated API tokens (tells them apart from webhook secrets in a leak scan).
TOKEN_PREFIX = "ndapi_"
#: Seconds between two looks at the token file.
RECHECK_S = 1.0


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def create_token_file(path: Path) -> str | None:
    """Write a token file with one new token if there is none; the token, or None."""
    if path.exists():
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    token = generate_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("# nevent-dispatch management API tokens: one per line; delete a line to "
                "revoke it.\n")
        f.write(token + "\n")
    return token


def parse_tokens(text: str) -> tuple[bytes, ...]:
    tokens = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            tokens.append(line.encode())
    return tuple(tokens)


class Tokens:
    """The accepted tokens, kept in step with the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tokens: tuple[bytes, ...] = ()
        self._seen: tuple[int, int, int] | None = None
        self._checked = -RECHECK_S
        self.refresh(force=True)

    def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < RECHECK_S:
            return
        self._checked = now
        try:
            st = self.path.stat()
        except OSError:
            if self._tokens or self._seen is None:
                log.warning("api_token_file_missing", path=str(self.path))
            self._tokens, self._seen = (), (0, 0, 0)
            return
        seen = (st.st_mtime_ns, st.st_size, st.st_ino)
        if seen == self._seen:
            return
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.error("api_token_file_unreadable", path=str(self.path), error=str(exc))
            self._tokens = ()
        else:
            self._tokens = parse_tokens(text)
            log.info("api_tokens_loaded", path=str(self.path), count=len(self._tokens))
        self._seen = seen

    def accepts(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries one of the tokens."""
        self.refresh()
        if not authorization:
            return False
        scheme, _, given = authorization.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        offered = given.strip().encode("utf-8", "surrogateescape")
        # Every token is compared, whatever matched: the time does not tell which.
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(offered, token)
        return ok
