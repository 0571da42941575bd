#!/usr/bin/env python3
"""Run the reliability tests and write their figures to docs/reliability.md.

    .venv/bin/python scripts/reliability_report.py [--seed N] [--output PATH] [-- PYTEST ARGS]

The tests in ``tests/reliability/`` record what they did (kills survived,
events published and lost, duplicates seen by receivers and where they came
from, faults and bad inputs tried, load latencies, the delivery core's bounds)
in a JSON file named by $RELIABILITY_FIGURES; this script runs them, and the
unit test of the delivery state machine, with that variable set, then renders
the figures, the states and their moves, the machine, the date, the seed and
the command as Markdown. It exits with
pytest's status, after writing the report either way (a failed run says so
at the top).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "reliability.md"
FIGURES_ENV = "RELIABILITY_FIGURES"
SEED_ENV = "RELIABILITY_SEED"
#: What the report runs: the reliability tests, and the state machine's guard of every
#: state-changing statement (the moves the page lists).
TESTS = ("tests/reliability", "tests/unit/test_state_machine.py")


def run_tests(seed: int | None, extra: list[str]) -> tuple[int, list[str], dict[str, Any], float,
                                                           list[str]]:
    """Run pytest on ``TESTS``.

    Returns pytest's status, its summary lines (the final count and every FAILED
    line), the figures, the seconds taken and the command.
    """
    command = [sys.executable, "-m", "pytest", *TESTS, "-q", "-p", "no:cacheprovider", *extra]
    with tempfile.TemporaryDirectory() as folder:
        figures_path = Path(folder) / "figures.json"
        env = {**os.environ, FIGURES_ENV: str(figures_path)}
        if seed is not None:
            env[SEED_ENV] = str(seed)
        started = time.monotonic()
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              check=False)
        elapsed = time.monotonic() - started
        sys.stdout.write(proc.stdout[-4000:])
        sys.stderr.write(proc.stderr[-4000:])
        figures = json.loads(figures_path.read_text()) if figures_path.exists() else {}
    lines = proc.stdout.splitlines()
    total = next((line.strip("= ") for line in reversed(lines)
                  if re.search(r"\b(passed|failed|error)", line)), "no summary")
    failed = [line.split(" - ")[0] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    return proc.returncode, [total, *failed], figures, elapsed, command


def row(name: str, value: Any) -> str:
    return f"| {name} | {value} |"


def spread(figure: dict[str, float] | None) -> str:
    """``{"median": …, "p90": …, "max": …}`` as "median 12.0 / p90 40.1 / max 80.3 ms"."""
    if not figure:
        return "n/a"
    return " / ".join(f"{key} {figure[key]}" for key in ("median", "p90", "p99", "max")
                      if key in figure) + " ms"


def crash_section(figures: dict[str, Any]) -> list[str]:
    """The crash test's figures, with the duplicates split by where they came from."""
    def get(key: str) -> Any:
        return figures.get(key, "n/a")

    requests = {k: figures.get(f"crash_requests.{k}", 0) for k in ("single", "batch")}
    resent = {k: figures.get(f"crash_resent_requests.{k}", 0) for k in ("single", "batch")}
    events = {k: figures.get(f"crash_resent_events.{k}", 0) for k in ("single", "batch")}
    per_kill = figures.get("crash_per_kill", [])
    busy = [(n, r) for n, r in enumerate(per_kill, 1) if r[1]]
    lines = [
        "## Crash safety (`kill -9` while the application publishes)",
        "",
        "Delivery is at least once: a daemon killed with `kill -9` loses what it had sent but "
        "not yet recorded, and the next daemon sends it again under the same "
        "`X-Nevent-Delivery` id. The test splits every repeat a receiver saw by its cause; a "
        "repeat with any other cause fails it.",
        "",
        "| figure | value |",
        "|---|---|",
        row("kills survived (SIGKILL at random moments, restarted at once)",
            f"{get('kills_survived')} ({get('crash_kills_delivering')} of them while the daemon "
            "was ready to send, the others while it started up)"),
        row("events published (application transactions, 2 organizations, 4 webhooks "
            "incl. one batch-mode)", get("events_published")),
        row("events lost (must be 0)", get("events_lost")),
        row("requests received by the crash test's receivers",
            f"{get('crash_deliveries')} ({requests['single']} to the 3 single-event webhooks, "
            f"{requests['batch']} batches)"),
        row("requests received again after a kill, same delivery id",
            f"{resent['single'] + resent['batch']} ({resent['single']} single, "
            f"{resent['batch']} batches)"),
        row("duplicate event ids at receivers (repeats of an event at one webhook)",
            f"{get('duplicates_observed')} ({events['single']} in single requests, "
            f"{events['batch']} in the {resent['batch']} batches sent again)"),
        row("requests one daemon sent twice (must be 0)", get("crash_same_run_resends")),
        row("events one webhook received under two delivery ids (must be 0)",
            get("crash_events_under_two_ids")),
        row("resends of an attempt whose success the killed daemon had committed (must be 0)",
            get("crash_committed_then_resent")),
        row("receiver's answer → commit of the attempt in the state database, single",
            spread(figures.get("crash_commit_lag_ms.single"))),
        row("receiver's answer → commit of the attempt in the state database, batch",
            spread(figures.get("crash_commit_lag_ms.batch"))),
        row("how long before its kill each resent request had been answered",
            spread(figures.get("crash_resent_age_ms"))),
        row("seed", get("seed")),
        "",
    ]
    if per_kill:
        lines += [
            f"Per kill: {len(per_kill) - len(busy)} of the {len(per_kill)} kills came before "
            "that daemon had sent anything; the others (a daemon is ready to send once it has "
            "started up and logged `dispatcher_started`):",
            "",
            "| kill | ready to send for (s) | requests it sent | sent again: single | sent again: batches "
            "| event ids sent again | oldest lost answer (ms before the kill) |",
            "|---|---|---|---|---|---|---|",
            *[f"| {n} | {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | "
              f"{'–' if r[5] is None else r[5]} |" for n, r in busy],
            "",
        ]
    return lines


def core_section(figures: dict[str, Any]) -> list[str]:
    """The delivery core's bounds, as ``test_core_regressions.py`` measured them."""
    lines = ["## Bounds of the delivery core (`tests/reliability/test_core_regressions.py`)", "",
             "| bound | measured | limit |", "|---|---|---|"]
    memory = figures.get("core_memory")
    if memory:
        lines.append(row(f"peak resident memory draining {memory['events']} events of "
                         f"~{memory['event_kb']} KB ({memory['received']} received)",
                         f"{memory['peak_mb']} MB | {memory['bound_mb']} MB"))
    fair = figures.get("core_fairness")
    if fair:
        lines.append(row(f"another organization's events (commit → receipt, "
                         f"{fair['events']} events) while one webhook has {fair['backlog']:,} "
                         f"due retries at 12/min", f"median {fair['median_ms']} / max "
                         f"{fair['max_ms']} ms | max {fair['bound_ms']:.0f} ms"))
    off = figures.get("core_disabled_backlog")
    if off:
        lines.append(row(f"another webhook's events beside a disabled one's {off['backlog']:,} "
                         f"pending deliveries", f"median {off['median_ms']} ms, CPU "
                         f"{off['cpu_s']} s in 5 s | median {off['bound_ms']:.0f} ms, CPU "
                         f"{off['cpu_bound_s']} s"))
    for key, name in (("batch", "batch webhook at 10/min, burst 100"),
                      ("toggled", "600/min, burst 100, disabled 1 s and enabled mid-backlog")):
        bucket = figures.get(f"core_bucket.{key}")
        if bucket:
            total, span, bound = bucket
            lines.append(row(f"most events in any window of T s ({name})",
                             f"{total} in {span} s | {bound} (capacity + rate × T)"))
    idle = figures.get("core_idle")
    if idle:
        lines.append(row(f"CPU of an idle daemon over {idle['window_s']:.0f} s",
                         f"{idle['cpu_s']} s | {idle['cpu_bound_s']} s"))
        lines.append(row("light load (5 events/s), commit → receipt",
                         f"median {idle['light_median_ms']} ms | median "
                         f"{idle['light_bound_ms']:.0f} ms"))
    return [*lines, ""] if len(lines) > 4 else []


def states_section() -> list[str]:
    """The delivery states and their moves, from ``nevent_dispatch.models.TRANSITIONS``."""
    sys.path.insert(0, str(ROOT))
    from nevent_dispatch.models import TRANSITIONS

    def name(state: Any) -> str:
        return "(created)" if state is None else f"`{state.value}`"

    return [
        "## Delivery states",
        "",
        "Every statement that changes a delivery's state names its moves and admits only "
        "their sources (`tests/unit/test_state_machine.py`, run with this report); the "
        "legal moves:",
        "",
        "| from | to |",
        "|---|---|",
        *[row(name(source), ", ".join(name(t) for t in sorted(targets, key=str)) or "— (final)")
          for source, targets in TRANSITIONS.items()],
        "",
    ]


def render(status: int, summary: list[str], figures: dict[str, Any], elapsed: float,
           command: list[str], invocation: str) -> str:
    faults = figures.get("faults", [])
    bad = figures.get("bad_inputs", [])
    fuzz = {k.removeprefix("fuzz_examples."): v for k, v in sorted(figures.items())
            if k.startswith("fuzz_examples.")}
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    machine = (f"{os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), "
               f"{platform.system()} {platform.release()} {platform.machine()}, "
               f"Python {platform.python_version()}")
    verdict = "all passed" if status == 0 else f"FAILED (pytest exit status {status})"
    lines = [
        "# Reliability figures",
        "",
        "Generated by `scripts/reliability_report.py` from a run of `tests/reliability/`; "
        "rerun the script to refresh this page rather than editing it.",
        "",
        f"**Result: {verdict}** — {summary[0]}.",
        "",
        *[f"- {line}" for line in summary[1:]],
        *([""] if summary[1:] else []),
        *crash_section(figures),
        "## Load",
        "",
        "| figure | value |",
        "|---|---|",
        row("webhooks (healthy, batch, failing 500, slow 200 ms)",
            figures.get("load_webhooks", "n/a")),
        row("events published", figures.get("load_events", "n/a")),
        row("requests received", figures.get("load_requests", "n/a")),
        row("healthy median latency, healthy-only baseline",
            f"{figures.get('load_latency_baseline_ms', 'n/a')} ms"),
        row("healthy median latency, with failing and slow webhooks busy",
            f"{figures.get('load_latency_loaded_ms', 'n/a')} ms"),
        "",
        f"## Hostile receivers ({len(faults)} faults tried)",
        "",
        "Each with `delivery.timeout = 1` beside a healthy webhook whose latency is compared "
        "before and during the fault.",
        "",
        *[f"- {name}" for name in faults],
        "",
        f"Peak traced memory while four 50 MB answers arrived: "
        f"{figures.get('huge_body_peak_traced_mb', 'n/a')} MB.",
        "",
        "## Model-based test of the delivery core (`tests/reliability/test_model.py`)",
        "",
        "A Hypothesis state machine drives a real daemon, real HTTPS receivers and the CLI "
        "through random histories (events, floods, webhooks created, disabled, enabled, "
        "deleted, re-limited, batch toggled; receivers answering 200, 500, 429 or hanging; "
        "SIGTERM and SIGKILL restarts) and checks the core's invariants on the whole record: "
        "delivery to every webhook active at intake, nothing to inactive ones, a resend only "
        "after a failure, timeout or crash and always under the same delivery id, the bucket "
        "bound, and another organization's latency bound:",
        "",
        *[f"{n}. {text}" for n, text in enumerate(figures.get("model_invariants", []))],
        "",
        "| figure | value |",
        "|---|---|",
        *[row(f"examples: {k.removeprefix('model_examples.')}", v)
          for k, v in sorted(figures.items()) if k.startswith("model_examples.")],
        *[row(name, figures.get(f"model_{key}", "n/a")) for key, name in (
            ("steps", "steps"), ("kills", "daemon kills (SIGKILL)"),
            ("restarts", "daemon restarts (SIGTERM)"), ("events", "events committed"),
            ("requests", "requests received"), ("probes", "fairness probes measured"),
            ("failing_examples", "examples breaking an invariant (must be 0)"))],
        "",
        *core_section(figures),
        *states_section(),
        f"## Bad input ({len(bad)} inputs tried)",
        "",
        *[f"- {name}" for name in bad],
        "",
    ]
    if fuzz:
        lines += ["## Fuzzing (hypothesis examples run)", "", "| target | examples |", "|---|---|",
                  *[row(f"`{name}`", count) for name, count in fuzz.items()], ""]
    lines += [
        "## Run",
        "",
        "| | |",
        "|---|---|",
        row("date", now.isoformat().replace("+00:00", "Z")),
        row("machine", machine),
        row("duration of the reliability tests", f"{elapsed:.0f} s"),
        row("command", f"`{invocation}`"),
        row("tests run as", f"`{shlex.join(['python', *command[1:]])}`"),
        row("rerun with the same seed", f"`{SEED_ENV}={figures.get('seed', 'N')} "
                                               f"{invocation}`"),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, help=f"seed of the randomized tests (${SEED_ENV})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="Markdown file to write (default: docs/reliability.md)")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else (
        int(os.environ[SEED_ENV]) if os.environ.get(SEED_ENV) else None)
    status, summary, figures, elapsed, command = run_tests(seed, args.pytest_args)
    invocation = shlex.join(["python", "scripts/reliability_report.py",
                             *(argv if argv is not None else sys.argv[1:])])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(render(status, summary, figures, elapsed, command, invocation),
                           encoding="utf-8")
    print(f"wrote {args.output} ({summary[0]})")
    return status


if __name__ == "__main__":
    sys.exit(main())
