"""``python -m bench`` / ``python bench/run.py``: run the figures and print the table (and,
with ``--write-docs``, write it to docs/performance.md).

Owns the command line, the sizes (full and ``--smoke``), the order of the
rounds (each round: the bare client, then every selected figure, so figures
alternate with their limit), the receivers' lifetime and the cleanup of every
process and file, whatever happens. It must not fail on a figure: the exit
status is 0 unless the benchmark itself could not run (1) or was interrupted
(130).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

if __package__ in (None, ""):  # ``python bench/run.py``: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "bench"  # noqa: A001

from . import report, scenarios  # noqa: E402
from .harness import Bench, Sizes, SlowVariant  # noqa: E402
from .procs import Cores, Processes  # noqa: E402
from .receivers import Nginx, Sink  # noqa: E402
from .tls import make_tls  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = ROOT / "docs" / "performance.md"

FULL = Sizes(
    events=100_000, memory_events=1_000_000, fanout_webhooks=1_000, latency_rates=(200, 2_000),
    latency_s=30.0, slow_events=20_000, bare_requests=50_000, repeat=3,
    slow_variants=(
        SlowVariant(100), SlowVariant(100, per_webhook=64),
        SlowVariant(100, max_in_flight=1024, per_webhook=64),
        SlowVariant(5), SlowVariant(5, per_webhook=64),
    ),
)
SMOKE = Sizes(
    events=2_000, memory_events=20_000, fanout_webhooks=1_000, latency_rates=(200, 2_000),
    latency_s=3.0, slow_events=1_000, bare_requests=2_000, repeat=1, large_events=30,
    fair_backlog=2_000, api_history=20_000,
    slow_variants=(SlowVariant(5), SlowVariant(5, per_webhook=64)),
)


def _rates(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure the real nevent-dispatch daemon against the bare-client limit of "
                    "this machine, on 127.0.0.1 over HTTPS. Prints the figures and writes "
                    "docs/performance.md. Never fails on a figure.")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes for CI: finishes in under 30 s (figures mean little)")
    p.add_argument("--repeat", type=int, help="rounds; figures report medians (3; smoke 1)")
    p.add_argument("--events", type=int, help="events of the drain figures (100000; smoke 2000)")
    p.add_argument("--memory-events", type=int,
                   help="backlog of the memory figure (1000000; smoke 20000)")
    p.add_argument("--fanout-webhooks", type=int, help="webhooks of the fan-out figure (1000)")
    p.add_argument("--latency-rates", type=_rates, metavar="R,R",
                   help="publish rates of the latency figure, events/s (200,2000)")
    p.add_argument("--latency-seconds", type=float, help="seconds per latency rate (30; smoke 3)")
    p.add_argument("--slow-events", type=int,
                   help="events per slow-receiver variant (20000; smoke 1000)")
    p.add_argument("--bare-requests", type=int,
                   help="requests of each bare client run (50000; smoke 2000)")
    p.add_argument("--only", metavar="LIST",
                   help=f"figures to run, comma-separated ({','.join(scenarios.FIGURES)}; "
                        f"all, but {','.join(sorted(scenarios.NOT_IN_SMOKE))} with --smoke)")
    p.add_argument("--receiver", choices=("auto", "nginx", "aiohttp"), default="auto",
                   help="fast receiver: nginx when installed (auto), or force one")
    p.add_argument("--log-level", default="warning",
                   choices=("debug", "info", "warning", "error"),
                   help="the daemon's [log] level (warning: the per-attempt line is not written)")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="set a daemon config key in every run, VALUE in TOML "
                        "(e.g. outbox.poll_interval=0.005); repeatable")
    p.add_argument("--write-docs", action="store_true",
                   help=f"write the page to {DEFAULT_OUTPUT} (without it the figures are only "
                        "printed)")
    p.add_argument("--output", default=None, metavar="PATH",
                   help="write the page to PATH instead ('-': nowhere)")
    p.add_argument("--workdir", type=Path, help="scratch directory (default: a new temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the scratch files and databases")
    p.add_argument("--profile", type=Path, metavar="PATH",
                   help="after the rounds, run one more drain under py-spy (if installed; batch "
                        "mode when --only names batch and not drain) and write its collapsed "
                        "stacks to PATH (not a figure)")
    return p


def sizes_from(args: argparse.Namespace) -> Sizes:
    base = SMOKE if args.smoke else FULL
    pick = {"repeat": args.repeat, "events": args.events, "memory_events": args.memory_events,
            "fanout_webhooks": args.fanout_webhooks, "latency_rates": args.latency_rates,
            "latency_s": args.latency_seconds, "slow_events": args.slow_events,
            "bare_requests": args.bare_requests}
    values = {k: v for k, v in pick.items() if v is not None}
    for key, value in values.items():
        if key != "latency_rates" and not value > 0:
            raise SystemExit(f"python -m bench: --{key.replace('_', '-')} must be > 0")
    return dataclasses.replace(base, **values)


def overrides(settings: Sequence[str]) -> dict[str, str]:
    """``--set`` values by dotted key; refused early when malformed."""
    found: dict[str, str] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or "." not in key or not value.strip():
            raise SystemExit(f"python -m bench: --set expects TABLE.KEY=VALUE, got {setting!r}")
        found[key.strip()] = value.strip()
    return found


def code_digest() -> str:
    """A digest of the daemon's sources, to tell whether they changed during the run."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "nevent_dispatch").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".sql", ".toml"):
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def code_version() -> str:
    """The git commit of the checkout (read-only git commands), and whether the code differs."""
    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", "--no-optional-locks", "-C", str(ROOT), *args],
                                  capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown commit"
    changed = git("status", "--porcelain", "--", "nevent_dispatch", "pyproject.toml")
    return f"{commit}{' with uncommitted changes' if changed else ''}"


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    sizes = sizes_from(args)
    overrides(args.set)
    default = [name for name in scenarios.FIGURES
               if not (args.smoke and name in scenarios.NOT_IN_SMOKE)]
    selected = ([name.strip() for name in args.only.split(",") if name.strip()] if args.only
                else default)
    unknown = [name for name in selected if name not in scenarios.FIGURES]
    if unknown:
        raise SystemExit(f"python -m bench: unknown figure(s) {', '.join(unknown)}")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="nevent-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    # The children import ``bench`` and ``nevent_dispatch`` from this checkout.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    os.chdir(ROOT)
    previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    procs = Processes()
    bench: Bench | None = None
    status = 0
    started = time.monotonic()
    code = start_code = code_digest()
    version = code_version()
    load_before = os.getloadavg()[0]
    try:
        bench = _setup(args, sizes, workdir, procs)
        for round_no in range(1, sizes.repeat + 1):
            print(f"round {round_no}/{sizes.repeat}", flush=True)
            scenarios.limits(bench)
            for name in selected:
                t0 = time.monotonic()
                try:
                    scenarios.FIGURES[name](bench)
                except (OSError, RuntimeError, ValueError, sqlite3.Error) as exc:
                    # One broken figure must not lose the others: noted, and the exit status is 1.
                    bench.note(f"{name} failed in round {round_no}: {type(exc).__name__}: {exc}")
                    status = 1
                print(f"  {name}: {time.monotonic() - t0:.1f} s", flush=True)
            if code_digest() != code:
                # Other work on the checkout while measuring: the rounds measured different code.
                code = code_digest()
                bench.note(f"nevent_dispatch changed during round {round_no}: the rounds did "
                           "not all measure the same code")
        if args.profile:
            _profile(bench, args.profile, batch="batch" in selected and "drain" not in selected)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started", file=sys.stderr)
        status = 130
    except Exception as exc:  # noqa: BLE001 - report, clean up, exit 1
        print(f"python -m bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        if bench is not None:
            bench.note(f"the benchmark stopped early: {type(exc).__name__}: {exc}")
        status = 1
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for signum in previous:
            signal.signal(signum, signal.SIG_IGN)
        procs.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if bench is not None:
            bench.cleanup()
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    if bench is None:
        return status or 1
    load = f"{load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end (1-minute)"
    if code_digest() != start_code:  # a commit touching only other files changes nothing measured
        version = f"{version} at the start, {code_version()} at the end (see Observations)"
    _publish(args, argv, bench, version, load, write=status != 130)
    print(f"took {time.monotonic() - started:.0f} s", flush=True)
    return status


def _setup(args: argparse.Namespace, sizes: Sizes, workdir: Path, procs: Processes) -> Bench:
    cores = Cores.detect()
    tls = make_tls(workdir / "tls")
    sink = Sink.start(procs, cores, tls, workdir / "sink", delay_s=scenarios.SLOW_DELAY_S)
    fast: Nginx | Sink | None = None
    if args.receiver in ("auto", "nginx"):
        fast = Nginx.start(procs, cores, tls, workdir / "nginx")
        if fast is None and args.receiver == "nginx":
            raise RuntimeError("nginx was asked for but could not be started")
    bench = Bench(sizes=sizes, workdir=workdir, procs=procs, cores=cores, tls=tls,
                  fast=fast or sink, sink=sink, log_level=args.log_level, keep=args.keep,
                  overrides=overrides(args.set))
    if fast is None and args.receiver == "auto":
        bench.note("nginx is not installed (or did not start): the aiohttp receiver stands in "
                   "as the fast receiver, and limits are its limits")
    print(f"receivers: fast = {bench.fast.label}, slow and latency = {sink.label}; "
          f"{cores.describe()}; TLS by {tls.made_with}; scratch {workdir}", flush=True)
    return bench


def _profile(bench: Bench, path: Path, *, batch: bool) -> None:
    from .profile import profile_drain

    profile_drain(bench, path, batch=batch)


def _publish(args: argparse.Namespace, argv: list[str], bench: Bench, version: str, load: str,
             *, write: bool) -> None:
    figures = list(bench.figures.values())
    print()
    print(report.table(figures))
    if bench.notes:
        print("\nobservations:")
        for note in bench.notes:
            print(f"- {note}")
    if args.output is None:
        args.output = str(DEFAULT_OUTPUT) if args.write_docs else "-"
    if not write or args.output == "-":
        if not args.write_docs:
            print(f"\n(printed only: --write-docs writes {DEFAULT_OUTPUT})")
        return
    facts = report.machine(bench.fast.label if bench.fast is not bench.sink
                           else "aiohttp fallback", bench.cores.describe())
    facts.insert(0, ("Code", f"nevent-dispatch at {version}"))
    facts.append(("Load average", f"{load} — other work on the machine skews every figure"))
    if bench.overrides:
        facts.append(("Config set for every run",
                      ", ".join(f"`{k} = {v}`" for k, v in bench.overrides.items())))
    text = report.page(command=report.command_line(argv), facts=facts, figures=figures,
                       method=report.method(bench.sizes), notes=bench.notes, smoke=args.smoke)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    print(f"\nwrote {output}")


if __name__ == "__main__":
    sys.exit(main())
