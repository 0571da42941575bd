"""Figures and their rendering: the table printed and written to ``docs/performance.md``.

Owns the ``Figure`` record (a daemon figure's samples beside the limit samples
measured alternately with it, and a target shown — never enforced), number
formatting, the machine description and the page itself. Pure but for
``machine()``, which reads /proc and asks ``nginx -v``-style facts given to it.
"""

from __future__ import annotations

import math
import os
import platform
import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from .stats import median

#: Whether a target is met, from (median, ratio to the limit).
Check = Callable[[float, float], bool]


@dataclass(slots=True)
class Figure:
    label: str
    unit: str
    #: The daemon's value in each run.
    samples: list[float] = field(default_factory=list)
    #: The limit in the same unit, measured in the same rounds (empty: no limit applies).
    limits: list[float] = field(default_factory=list)
    #: What the limit is, e.g. "bare client" or "1 request at a time".
    limit_label: str = ""
    #: The limit's unit when it differs from the figure's ("req/s" beside "deliveries/s").
    limit_unit: str = ""
    target: str = ""
    check: Check | None = None
    #: One line per run, for the "Runs" section.
    details: list[str] = field(default_factory=list)

    @property
    def median(self) -> float:
        return median(self.samples)

    @property
    def limit(self) -> float:
        return median(self.limits)

    @property
    def ratio(self) -> float:
        if not self.limits or not self.limit:
            return math.nan
        return self.median / self.limit

    def met(self) -> bool | None:
        if self.check is None or math.isnan(self.median):
            return None
        return self.check(self.median, self.ratio)


def number(value: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def quantity(value: float, unit: str) -> str:
    return "n/a" if math.isnan(value) else f"{number(value)} {unit}"


def row(figure: Figure) -> list[str]:
    finite = [s for s in figure.samples if not math.isnan(s)]
    runs = len(figure.samples)
    if len(finite) > 1:
        spread = f"{number(min(finite))}–{number(max(finite))} ({runs} runs)"
    else:
        spread = f"({runs} run{'s' if runs != 1 else ''})"
    limit = "—"
    ratio = "—"
    if figure.limits:
        limit = f"{quantity(figure.limit, figure.limit_unit or figure.unit)} ({figure.limit_label})"
        ratio = "n/a" if math.isnan(figure.ratio) else (
            f"{figure.ratio:.2f}×" if figure.ratio < 10 else f"{figure.ratio:.0f}×")
    target = figure.target or "—"
    met = figure.met()
    if met is not None:
        target += " ✓ met" if met else " ✗ not met"
    return [figure.label, quantity(figure.median, figure.unit), spread, limit, ratio, target]


HEADER = ("Figure", "Median", "Min–max", "Limit (same run)", "Daemon ÷ limit", "Target")


def table(figures: Sequence[Figure]) -> str:
    """A Markdown table, padded so that it also reads well in a terminal."""
    rows = [list(HEADER), *(row(f) for f in figures)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = []
    for n, cells in enumerate(rows):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
                     + " |")
        if n == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine(receiver: str, pinning: str) -> list[tuple[str, str]]:
    """The facts a reader needs to compare these figures with their own."""
    return [
        ("CPUs", f"{os.cpu_count()} (nproc {len(os.sched_getaffinity(0))}), {_cpu_model()}"),
        ("Memory", _memory_total()),
        ("OS", platform.platform()),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("Libraries", f"aiohttp {_version('aiohttp')}, uvloop {_version('uvloop')}, "
                      f"aiosqlite {_version('aiosqlite')}, SQLite {sqlite3.sqlite_version}"),
        ("Receiver", receiver),
        ("Pinning", pinning),
        ("Date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]


def _memory_total() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as info:
            kb = int(info.readline().split()[1])
        return f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def page(*, command: str, facts: Sequence[tuple[str, str]], figures: Sequence[Figure],
         method: Sequence[str], notes: Sequence[str], smoke: bool) -> str:
    """The whole ``docs/performance.md``."""
    out = [
        "# Performance",
        "",
        "Figures of the real daemon — `nevent-dispatch run` as a subprocess, as a user starts",
        "it — delivering over HTTPS on loopback, each beside the limit of the same stack on",
        "the same machine, measured in the same run. This page is written by the benchmark;",
        "run it again to refresh it (see [How to run](#how-to-run)). Targets are shown for",
        "reference: the benchmark never fails on a number.",
        "",
    ]
    if smoke:
        out += ["> **Smoke size.** These figures come from `--smoke`, sized to finish in",
                "> seconds: start-up dominates them and they say nothing about capacity.", ""]
    out += ["## Figures", "", table(figures), "", "## Machine", ""]
    out += [f"- **{name}:** {value}" for name, value in facts]
    out += ["", "## How to run", "", "```", command, "```", "",
            "from the repository root, with the project's virtualenv (`python bench/run.py`",
            "is the same). It prints the figures; `--write-docs` also writes this page.",
            "`--help` lists the sizes and options: `--smoke` is the CI size",
            "(under 30 s), `--only` picks figures, `--set TABLE.KEY=VALUE` changes a daemon",
            "setting in every run (e.g. `outbox.poll_interval=0.005`), and `--profile PATH`",
            "adds one drain under py-spy when it is installed. It uses `trustme` (the `test`",
            "extra) or else `openssl` for the certificate, nginx when installed or else an",
            "aiohttp receiver, and `taskset` when present; it installs nothing. The full size",
            "takes about 20 minutes and ~2 GB of scratch disk (the 1,000,000-event outbox).", "",
            "## How each figure is measured", ""]
    out += list(method)
    out += ["", "## Runs", ""]
    for figure in figures:
        if figure.details:
            out.append(f"**{figure.label}**")
            out.append("")
            out += [f"- {line}" for line in figure.details]
            out.append("")
    out += ["## Observations", ""]
    out += [f"- {note}" for note in notes] if notes else ["- Nothing unusual was recorded."]
    out.append("")
    return "\n".join(out)


def command_line(argv: Sequence[str]) -> str:
    shown = ["python", "-m", "bench", *argv]
    return " ".join(a if a and " " not in a else repr(a) for a in shown)


def python_note() -> str:
    return sys.version.split()[0]


def method(sizes: Any) -> list[str]:
    """How each figure is measured, with this run's sizes."""
    s = sizes
    rates = " and ".join(f"{r:,}" for r in s.latency_rates)
    return [
        "- **Receivers.** The fast receiver is nginx when installed: one process",
        "  (`master_process off`) answering `return 200`, and `return 500 \"failed\"` under",
        "  `/fail/` (with a body: nginx closes the connection after a bodiless 500), with",
        "  unlimited keep-alive; receipts are counted from its access log (`$msec $status`).",
        "  Without nginx, `bench/sink.py` (aiohttp, one process) stands in. That aiohttp",
        "  receiver also serves the slow path (`/slow/`, answers after 50 ms) and the latency",
        "  path (`/lat/`, records the receipt time of every event's `data.seq`). A CA and a",
        "  certificate for 127.0.0.1 are made for each run (trustme, else openssl); the daemon",
        "  trusts them through `delivery.ca_file` with `delivery.allow_private_networks = true`.",
        "- **The daemon** is `nevent-dispatch --config run.toml run`, a new process per run, on",
        "  the defaults of `config.example.toml` except: the loopback settings above,",
        "  `[rate_limit] events_per_minute` and `burst` at 10,000,000 (the highest accepted,",
        "  so no figure measures the limiter) and `[log] level = \"warning\"` (the per-attempt",
        "  info line is not written; `--log-level info` measures with it). Each run starts from",
        "  a copy of a state database whose webhooks were created in-process with `Store` and",
        "  `registry.create`, and is stopped with SIGTERM once every delivery was attempted.",
        "  Outboxes are preloaded with the application's insert in one `executemany`",
        "  transaction; events carry the `purchase.completed` sample padded to "
        f"~{s.body_bytes:,} bytes.",
        "- **The limit** is the bare client (`bench/client.py`): the daemon's own",
        "  `ClientSession` (`sender.make_session`), uvloop, the same body, headers and TLS,",
        f"  {s.bare_requests:,} POSTs at 256 in flight (`delivery.max_in_flight`) over 100",
        "  paths, timed from the first request to the last answer; no database, signing or",
        "  lanes. The latency floor is the same client posting one request at a time, 200",
        f"  times, to the aiohttp receiver. Each of the {s.repeat} round(s) runs the bare",
        "  client first and then every figure; a ratio is the daemon's median over the",
        "  limit's median in the same rounds. Medians are shown with min–max over rounds.",
        "- **Pinning.** With `taskset` and two CPUs or more, the daemon and the bare client",
        "  run on the last CPU and the receivers on the others; the benchmark's own polling",
        "  and the latency publisher are not pinned.",
        f"- **Drain** — {s.events:,} preloaded events spread round-robin over 100",
        "  organizations with one webhook each, so every event is one delivery. Deliveries/s",
        "  = 2xx ÷ time from the spawn of `run` to the last 2xx (each attempt's start plus its",
        "  latency, read from the state database after the run). The figure includes the",
        "  process start-up (Python, imports, opening the databases: about 0.2 s); the *after",
        "  start-up* row times the same run from its first attempt. **Batch mode**: the",
        "  same events to the same webhooks in batch mode (up to 100 events per request),",
        "  in events/s.",
        "- **Latency** — after 100 warm-up events, `bench/publisher.py` calls `publish()` and",
        f"  commits once per event, at {rates} events/s for {s.latency_s:g} s each, over 100",
        "  organizations; latency = receipt time at the aiohttp receiver − the publisher's",
        "  commit time, per event (one clock: the same machine). The outbox is polled every",
        "  `outbox.poll_interval` (default 5 ms).",
        f"- **Fan-out** — one organization with {s.fanout_webhooks:,} webhooks; after a",
        "  warm-up event, the time from the commit of one event to the last receipt at the",
        "  fast receiver (nginx logs milliseconds). Its limit is the time the bare client",
        f"  takes for {s.fanout_webhooks:,} requests at its measured rate.",
        f"- **Memory** — the drain of a {s.memory_events:,}-event backlog: peak RSS is the",
        "  daemon's VmHWM (read just before SIGTERM); VmRSS is sampled every 0.5 s with the",
        "  progress, and the RSS at 10/50/90 % is the first sample once that share of the",
        "  deliveries was attempted. Flat figures mean memory does not grow with the backlog.",
        f"  **Large events**: the same measure for {s.large_events:,} events of just under",
        "  1 MB (the payload limit) over 10 webhooks: memory is bounded in bytes",
        "  (`outbox.max_page_bytes`, `memory.budget_bytes`), not in rows.",
        f"- **Fairness** — organization 0's webhook, limited to 12 events/min, holds {s.fair_backlog:,}",
        "  deliveries due now (as after an outage of its endpoint); organization 1's webhook",
        "  gets 50 events published one at a time, and the figure is their p50 commit →",
        "  receipt. The limit is the same run with no backlog at all: the ratio is the price",
        "  other customers pay for one customer's backlog.",
        "- **Webhook changes** — the state holds 50,000 active webhooks: the drain's 100 and",
        "  49,900 more, 10 to an organization of their own, every other one with the filter",
        "  `{\"data.amount\": {\"$gt\": 10}}` (written by the store's own insert). The drain above",
        "  runs once while `bench/changer.py` (another process with a `Store` of its own, on the",
        "  receivers' CPU) changes one random non-drain webhook a second through",
        "  `registry.update` (its name or its rate limit, in turn), and once without; both",
        "  timed after start-up (loading 50,000 webhooks), the order alternating between",
        "  rounds. Then one daemon gets events at 200/s for the latency duration without",
        "  changes and again with them, commit → receipt as in the latency figure. `--smoke`",
        "  leaves it out unless `--only` names it.",
        "- **Management API under load** — the non-batch drain twice in each round, the order",
        "  alternating: once while `bench/apiclient.py` (on the receivers' CPU) lists",
        "  `GET /v1/organizations/{org}/deliveries?limit=100` at 50 requests/s over the API's",
        "  Unix socket, across the 100 organizations, and once without it. The ratio is the",
        "  price of the API to delivery.",
        f"- **API list latency** — a state holding {s.api_history:,} delivered deliveries (with",
        "  their attempts) over 100 organizations; the client sends 400 list requests one at a",
        "  time (`limit=100`), following `next_cursor` to the 5th page of each organization",
        "  before starting from the newest again. Client-side p50 / p99, Unix socket.",
        "- **Failure load** — the drain with webhooks 0, 5, 10, … (20 %) answering 500. Their",
        "  retries fall due 60 s later (default schedule), after the run. A failing attempt",
        "  costs about what a successful one does, so healthy deliveries/s near 0.8× the clean",
        "  drain, with all attempts/s near the clean drain, means failures slow nobody else.",
        f"- **Slow receivers** — {s.slow_events:,} events over the webhooks of each variant,",
        "  answered after 50 ms. Throughput cannot exceed in-flight ÷ latency, where in-flight",
        "  = min(`max_in_flight`, webhooks × `max_in_flight_per_webhook`); the limit is the bare",
        "  client at that concurrency against the same receiver. With many webhooks the",
        "  global `delivery.max_in_flight` is the bound, and raising the per-webhook setting",
        "  changes nothing; with few webhooks (5 × 16 = 80 < 256) raise",
        "  `delivery.max_in_flight_per_webhook`. Either way the receiver's and the daemon's",
        "  CPU cap it next.",
    ]
