"""The receivers the daemon and the bare client post to, all on 127.0.0.1 over HTTPS.

Owns starting, probing and counting them:

* ``Nginx`` — the fast receiver when ``nginx`` is installed: one process
  (``master_process off``) answering ``return 200`` (``/fail/…``: 500) with
  keep-alive effectively unlimited; receipts are counted from its access log
  (``$msec $status``), read incrementally.
* ``Sink`` — ``python -m bench.sink`` (aiohttp): the fallback fast receiver, the
  50 ms slow receiver and the latency probe; counted through ``GET /__stats``.

Both are pinned to the receiver CPUs and stopped through ``Processes``. It must
not listen anywhere but 127.0.0.1.
"""

from __future__ import annotations

import http.client
import re
import shutil
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from .procs import Cores, Processes, wait_for
from .tls import Tls

#: Seconds a receiver has to start accepting connections.
START_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Counts:
    """Requests a receiver answered so far: 2xx, 5xx, and the time of the last one."""

    ok: int
    failed: int
    last_at: float


class Receiver(Protocol):
    label: str

    def url(self, path: str) -> str: ...
    def counts(self) -> Counts: ...


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def nginx_version(binary: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(rb"nginx/(\d+)\.(\d+)\.(\d+)", out.stderr + out.stdout)
    return tuple(int(n) for n in found.groups()) if found else None


_NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
    multi_accept on;
}}
http {{
    log_format bench '$msec $status';
    access_log {prefix}/access.log bench;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    # A fast receiver never closes a busy keep-alive connection.
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        # With a body, nginx answers 500 without closing the keep-alive connection.
        location /fail/ {{ return 500 "failed\\n"; }}
        location / {{ return 200; }}
    }}
}}
"""


class Nginx:
    """nginx as the fast receiver; ``start`` returns None when it cannot run here."""

    def __init__(self, label: str, port: int, access_log: Path) -> None:
        self.label = label
        self.port = port
        self._log = access_log
        self._offset = 0
        self._partial = b""
        self._ok = self._failed = 0
        self._last_at = 0.0

    @classmethod
    def start(cls, procs: Processes, cores: Cores, tls: Tls, folder: Path) -> Nginx | None:
        binary = shutil.which("nginx") or next(
            (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None)
        if binary is None:
            return None
        version = nginx_version(binary)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tmp").mkdir(exist_ok=True)
        port = free_port()
        conf = folder / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(prefix=folder, port=port, cert=tls.cert_file,
                                           key=tls.key_file))
        argv = [*cores.for_receiver(), binary, "-p", str(folder), "-c", str(conf)]
        if version is not None and version >= (1, 19, 5):
            argv += ["-e", str(folder / "error.log")]  # not the distribution's log path
        proc = procs.start(argv, log=folder / "stdout.log")
        if not wait_for(lambda: proc.poll() is not None or _accepting(port), START_TIMEOUT_S) \
                or proc.poll() is not None:
            procs.stop(proc)
            return None
        label = "nginx " + ".".join(map(str, version)) if version else "nginx"
        return cls(label, port, folder / "access.log")

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def counts(self) -> Counts:
        """Totals so far, reading only what the access log gained since the last call."""
        try:
            with open(self._log, "rb") as log:
                log.seek(self._offset)
                chunk = log.read()
        except FileNotFoundError:
            chunk = b""
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            at, _, status = line.partition(b" ")
            if status.startswith(b"2"):
                self._ok += 1
            else:
                self._failed += 1
            self._last_at = max(self._last_at, float(at))
        return Counts(self._ok, self._failed, self._last_at)


class Sink:
    """The aiohttp receiver process (``bench/sink.py``)."""

    label = "aiohttp fallback"

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port = port
        self._context = context

    @classmethod
    def start(cls, procs: Processes, cores: Cores, tls: Tls, folder: Path,
              delay_s: float = 0.05) -> Sink:
        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        argv = [*cores.for_receiver(), sys.executable, "-m", "bench.sink", "--port", str(port),
                "--cert", str(tls.cert_file), "--key", str(tls.key_file),
                "--delay", str(delay_s)]
        proc = procs.start(argv, log=folder / "sink.log", cwd=Path(__file__).resolve().parent.parent)
        context = ssl.create_default_context(cafile=str(tls.ca_file))
        sink = cls(port, context)
        if not wait_for(lambda: proc.poll() is not None or sink._alive(), START_TIMEOUT_S) \
                or proc.poll() is not None:
            procs.stop(proc)
            log = (folder / "sink.log").read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"the aiohttp receiver did not start: {log[-1] if log else '?'}")
        return sink

    def _alive(self) -> bool:
        try:
            self._get("/__stats")
        except OSError:
            return False
        return True

    def _get(self, path: str) -> Any:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self._context,
                                           timeout=30)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return orjson.loads(response.read())
        finally:
            conn.close()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def counts(self) -> Counts:
        stats = self._get("/__stats")
        return Counts(int(stats["ok"]), int(stats["failed"]), float(stats["last_at"]))

    def records(self) -> list[tuple[int, float, float]]:
        """Latency records since the last call: (seq, received_at, sent_at)."""
        return [(int(s), float(r), float(t)) for s, r, t in self._get("/__records")]
