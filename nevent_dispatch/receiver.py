"""The local test receiver behind ``nevent-dispatch listen``.

A small aiohttp server that accepts webhook POSTs on any path, verifies their
signature, prints one line (or one JSON object) per request and answers with
a chosen status, so operators and customers can rehearse deliveries and
failures without ngrok or webhook.site. With ``tls=True`` it makes its own
local CA and certificate with the ``openssl`` command.

It must not deliver, store or retry anything, and it never prints the secret.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from .catalog import BATCH_TYPE
from .errors import DispatchError, SignatureError
from .wire import envelope, signing

if TYPE_CHECKING:  # aiohttp's server side is imported when serving: the daemon never needs it
    from aiohttp import web

__all__ = ["DEFAULT_PORT", "make_ssl_context", "serve"]

DEFAULT_PORT = 8787
#: Twice the documented 1 MB payload limit, so oversized test bodies still print.
MAX_BODY_BYTES = 2 * 1024 * 1024
SHUTDOWN_TIMEOUT_S = 2.0

CA_FILE = "ca.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CERT_DAYS = 365
RENEW_BEFORE_S = 24 * 3600
OPENSSL_TIMEOUT_S = 30.0

_SHOWN_TEXT_MAX = 80


# -- planning the answer ---------------------------------------------------------


class _StatusPlan:
    """The status to answer an accepted request with: cycled list, then random 500s."""

    def __init__(self, statuses: list[int] | None, fail_rate: float, seed: int | None) -> None:
        for status in statuses or ():
            if not 200 <= status <= 599:
                raise DispatchError(f"listen: status must be 200-599, got {status}")
        if not 0.0 <= fail_rate <= 1.0:
            raise DispatchError(f"listen: fail rate must be between 0 and 1, got {fail_rate}")
        self._cycle: Iterator[int] | None = itertools.cycle(statuses) if statuses else None
        self._fail_rate = fail_rate
        self._rng = random.Random(seed)

    def next(self) -> int:
        status = next(self._cycle) if self._cycle is not None else 200
        # Draw only when asked to, so a seeded run replays the same sequence.
        if self._fail_rate and self._rng.random() < self._fail_rate:
            status = 500
        return status


def _events_of(body: Any) -> list[dict[str, Any]]:
    """The ``{id, type}`` of each event a body carries (one, or a batch's list)."""
    if not isinstance(body, dict):
        return []
    if body.get("type") == BATCH_TYPE and isinstance(body.get("events"), list):
        return [
            {"id": event.get("id"), "type": event.get("type")}
            for event in body["events"]
            if isinstance(event, dict)
        ]
    return [{"id": body.get("id"), "type": body.get("type")}]


# -- printing ------------------------------------------------------------------


def _clean(value: Any) -> str:
    """Untrusted text made safe for a terminal: no control characters, bounded length."""
    if value is None:
        return "-"
    text = "".join(
        "?" if unicodedata.category(char) in ("Cc", "Cf") else char for char in str(value)
    )
    if len(text) > _SHOWN_TEXT_MAX:
        text = text[: _SHOWN_TEXT_MAX - 3] + "..."
    return text


def _text_line(record: dict[str, Any], received_at: float) -> str:
    """The human-readable rendering of one request record."""
    clock = time.strftime("%H:%M:%S", time.localtime(received_at))
    events = record["events"]
    body = record["body"]
    if isinstance(body, dict) and body.get("type") == BATCH_TYPE:
        what = f"{_clean(record['event_type'])} ({len(events)} events)"
    else:
        ids = " ".join(_clean(event["id"]) for event in events) or "-"
        what = f"{_clean(record['event_type'])}  {ids}"
    if record["signature"] == "invalid":
        check = f"signature INVALID ({record['reason']})"
    else:
        check = f"signature {record['signature']}"
    answer = f"-> {record['status']}"
    if record["reason"] and record["signature"] != "invalid":
        answer += f" ({record['reason']})"
    line = (
        f"{clock}  POST {_clean(record['path'])}  {what}  "
        f"delivery={_clean(record['delivery_id'])}  {check}  {answer}\n"
    )
    if isinstance(body, dict) and body.get("type") == BATCH_TYPE:
        line += "".join(
            f"    {_clean(event['type'])}  {_clean(event['id'])}\n" for event in events
        )
    return line


def _iso_utc(at: float) -> str:
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def _emit(out: TextIO, text: str) -> None:
    out.write(text)
    # Flushed per request so a pipe (`listen --json | jq`) sees each line at once.
    out.flush()


# -- the server ------------------------------------------------------------------


def _make_handler(
    *, secret: str | None, tolerance: int, plan: _StatusPlan, json_lines: bool, out: TextIO
) -> Any:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        received_at = time.time()
        signature, reason, status = "unchecked", None, None
        if secret is not None:
            try:
                signing.verify_signature(
                    raw, request.headers.get(signing.SIGNATURE_HEADER), secret, tolerance
                )
                signature = "valid"
            except SignatureError as exc:
                signature, reason, status = "invalid", str(exc), 401
        try:
            body = envelope.loads(raw)
        except ValueError:
            body = None
        if status is None and not isinstance(body, dict):
            reason, status = "body is not a JSON object", 400
        if status is None:
            status = plan.next()
        event_type = request.headers.get(signing.EVENT_HEADER)
        if event_type is None and isinstance(body, dict):
            event_type = body.get("type")
        record = {
            "received_at": _iso_utc(received_at),
            "path": request.path,
            "event_type": event_type,
            "delivery_id": request.headers.get(signing.DELIVERY_HEADER),
            "signature": signature,
            "reason": reason,
            "status": status,
            "events": _events_of(body),
            "body": body,
        }
        if json_lines:
            _emit(out, orjson.dumps(record).decode() + "\n")
        else:
            _emit(out, _text_line(record, received_at))
        if status == 204 or status == 304:
            return web.Response(status=status)
        if reason is not None:
            return web.Response(status=status, text=reason)
        return web.Response(status=status, text="OK" if status == 200 else f"rehearsed {status}")

    return handle


async def serve(
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    secret: str | None,
    tls: bool = False,
    cert_dir: Path | None = None,
    statuses: list[int] | None = None,
    fail_rate: float = 0.0,
    json_lines: bool = False,
    out: TextIO | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    seed: int | None = None,
    tolerance: int = signing.DEFAULT_TOLERANCE_S,
) -> None:
    """Receive webhooks on ``host:port`` until ``stop`` is set (or forever).

    A rejected request (bad signature 401, body not a JSON object 400) is
    answered as such and does not use up a planned status; an accepted one
    gets the next of ``statuses`` (cycling, default 200), turned into a 500
    with probability ``fail_rate``. ``port=0`` picks a free port; the
    ``listening on`` line shows the real one. ``ready`` is set once bound.
    """
    from aiohttp import web

    out = sys.stdout if out is None else out
    plan = _StatusPlan(statuses, fail_rate, seed)
    ssl_context: ssl.SSLContext | None = None
    ca_file: Path | None = None
    if tls:
        directory = cert_dir if cert_dir is not None else Path("var") / "listen-tls"
        ssl_context, ca_file = await asyncio.to_thread(make_ssl_context, directory)

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    handler = _make_handler(
        secret=secret, tolerance=tolerance, plan=plan, json_lines=json_lines, out=out
    )
    app.router.add_route("POST", "/{path:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            raise DispatchError(
                f"listen: cannot bind {host}:{port}: {exc.strerror or exc}"
            ) from exc
        bound_port = runner.addresses[0][1]
        shown_host = f"[{host}]" if ":" in host else host
        url = f"{'https' if tls else 'http'}://{shown_host}:{bound_port}"
        if json_lines:
            _emit(
                out,
                orjson.dumps(
                    {"listening": url, "ca_file": str(ca_file) if ca_file else None}
                ).decode()
                + "\n",
            )
        else:
            check = "on" if secret is not None else "off"
            lines = f"listening on {url} (signature check: {check})\n"
            if ca_file is not None:
                lines += f"trust this CA: {ca_file}  (config: delivery.ca_file)\n"
            _emit(out, lines)
        if ready is not None:
            ready.set()
        await (stop if stop is not None else asyncio.Event()).wait()
    finally:
        await runner.cleanup()


# -- local TLS -------------------------------------------------------------------

# The CA may only vouch for loopback names (nameConstraints), and its key is
# discarded after signing the one leaf: trusting ca.pem trusts nothing else.
_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = nevent-dispatch listen
[v3_ca]
basicConstraints = critical, CA:TRUE, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
nameConstraints = critical, permitted;DNS:localhost, permitted;IP:127.0.0.1/255.255.255.255, \
permitted;IP:::1/ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff
[v3_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""
_EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


def make_ssl_context(cert_dir: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for ``cert_dir``'s certificate, and the CA file clients must trust.

    Reuses the files there unless one is missing, unreadable or expires
    within a day; otherwise makes a fresh CA and leaf certificate.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise DispatchError("listen --tls needs the openssl command")
    cert_dir = Path(cert_dir)
    if not _certificates_fresh(openssl, cert_dir):
        _generate_certificates(openssl, cert_dir)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_dir / CERT_FILE, cert_dir / KEY_FILE)
    except ssl.SSLError:
        # Fresh-looking files that do not belong together: start over once.
        _generate_certificates(openssl, cert_dir)
        context.load_cert_chain(cert_dir / CERT_FILE, cert_dir / KEY_FILE)
    return context, (cert_dir / CA_FILE).resolve()


def _certificates_fresh(openssl: str, cert_dir: Path) -> bool:
    if not all((cert_dir / name).is_file() for name in (CA_FILE, CERT_FILE, KEY_FILE)):
        return False
    for name in (CA_FILE, CERT_FILE):
        check = [openssl, "x509", "-noout", "-checkend", str(RENEW_BEFORE_S), "-in"]
        result = subprocess.run(
            [*check, str(cert_dir / name)],
            capture_output=True,
            timeout=OPENSSL_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            return False
    return True


def _run_openssl(step: str, args: list[str]) -> None:
    try:
        subprocess.run(args, capture_output=True, timeout=OPENSSL_TIMEOUT_S, check=True)
    except subprocess.CalledProcessError as exc:
        detail = exc.stderr.decode(errors="replace").strip().splitlines()
        raise DispatchError(
            f"listen --tls: openssl {step} failed: {detail[-1] if detail else exc.returncode}"
        ) from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DispatchError(f"listen --tls: openssl {step} failed: {exc}") from None


def _generate_certificates(openssl: str, cert_dir: Path) -> None:
    cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A private (0700) scratch directory on the same filesystem: keys are never
    # readable by others, and the final files appear with an atomic rename.
    with tempfile.TemporaryDirectory(dir=cert_dir, prefix=".generate-") as scratch:
        work = Path(scratch)
        config = work / "openssl.cnf"
        config.write_text(_OPENSSL_CONFIG)
        cfg = ["-config", str(config)]
        _run_openssl(
            "CA",
            [
                openssl, "req", "-x509", *_EC_KEY, *cfg, "-extensions", "v3_ca",
                "-subj", "/CN=nevent-dispatch listen local CA",
                "-days", str(CERT_DAYS + 1), "-sha256",
                "-keyout", str(work / "ca.key"), "-out", str(work / CA_FILE),
            ],
        )  # fmt: skip
        _run_openssl(
            "request",
            [
                openssl, "req", "-new", *_EC_KEY, *cfg, "-subj", "/CN=localhost",
                "-keyout", str(work / KEY_FILE), "-out", str(work / "leaf.csr"),
            ],
        )  # fmt: skip
        _run_openssl(
            "sign",
            [
                openssl, "x509", "-req", "-in", str(work / "leaf.csr"),
                "-CA", str(work / CA_FILE), "-CAkey", str(work / "ca.key"),
                "-set_serial", "0x" + secrets.token_hex(16), "-days", str(CERT_DAYS),
                "-sha256", "-extfile", str(config), "-extensions", "v3_leaf",
                "-out", str(work / CERT_FILE),
            ],
        )  # fmt: skip
        os.chmod(work / KEY_FILE, 0o600)
        for name in (KEY_FILE, CERT_FILE, CA_FILE):
            os.replace(work / name, cert_dir / name)
