"""Model-based test of the delivery core, black-box: a real daemon, real HTTPS receivers, the CLI.

Hypothesis drives a ``RuleBasedStateMachine`` through random histories of an
operator and an application: bursts of 1-30 events and floods of
``FLOOD_EVENTS`` committed for one of two organizations; webhooks created
(single or batch, default or explicit limit of 30-120 events/min), disabled,
enabled, deleted, re-limited, switched between batch and single mode;
receivers that answer 200, 500, 429 with ``Retry-After: 1``, or hang past the
daemon's timeout; the daemon drained with SIGTERM or killed with SIGKILL and
started again; time let pass. Meanwhile an application thread commits small
transactions for both organizations at a pace drawn per example, and a probe
event every ``PROBE_EVERY_S`` for a third, "probe" organization, whose one
webhook stays active and healthy throughout — so every example has traffic
and fairness samples, whichever rules Hypothesis switches off in it.

Each example ends with every receiver answering 200 and every explicit rate
limit reset to the default (``webhooks update --default-rate-limit``, so that
the drain is seconds, not minutes), then waits until the daemon has delivered
what it owes (and the receivers have been quiet for ``QUIET_S``), stops it, and
checks the whole record — what was committed when, which webhook was active
when, every request every receiver got — against the invariants of the core
(``model_support.INVARIANTS``; margins and bounds are constants there):

1. an event taken in while its webhook was active, the webhook active at the
   end, reaches it (unless the receiver saw its delivery fail 4 times);
2. an event committed while its webhook was clearly inactive, deleted or not
   yet created never reaches it; no event reaches another organization;
3. a delivery id comes again only after a non-2xx answer, a timeout or a
   daemon restart between the two requests;
4. one event reaches one webhook under one delivery id;
5. per daemon process and constant explicit limit, no window of T s carries
   more than capacity + rate × T events (+1);
6. every probe event not near a restart arrives within ``PROBE_BOUND_S``.
Invariant 0 is the harness's own: the daemon does not die or log failures of
its own, and the CLI accepts the valid commands it is given.

Webhooks are written through the CLI subprocess (``--json``), as an operator
does — about 0.35 s per command, which is why the examples are short. The
daemon is a ``python -m nevent_dispatch run`` subprocess logging JSON lines.

A broken invariant does not fail inside Hypothesis: an example takes tens of
seconds and its timing never replays exactly, so shrinking and Hypothesis'
final replay would be slow and flaky. Each example's violations are
collected; after the last example the test fails once, naming each broken
invariant with the examples that broke it, then the report of the first
failing examples: the offending events, requests and delivery ids, and the
steps of the example (times in seconds from its start). A second test runs
the same machine through one fixed history that random examples reach only
now and then (a rate-limited backlog, its webhook disabled and enabled).

Default (CI) run: 5 examples of at most 25 steps, plus the fixed history:
about 1.5 minutes on 2 cores (Hypothesis makes some examples short or empty;
those cost little). Longer run, with the summary line printed (MODEL_VERBOSE=1
prints every example's steps too):

    MODEL_EXAMPLES=40 MODEL_STEPS=60 .venv/bin/pytest -q -s tests/reliability/test_model.py

$RELIABILITY_SEED fixes Hypothesis' seed: the same steps, not the same timing.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from nevent_dispatch.config import Config

from ..conftest import Daemon, server_context
from . import model_support as ms
from .conftest import SEED_ENV, run_cli, toml_config

EXAMPLES = int(os.environ.get("MODEL_EXAMPLES") or 5)
STEPS = int(os.environ.get("MODEL_STEPS") or 25)
#: Set to print the steps of every example (with -s), not only of a failing one.
VERBOSE = bool(os.environ.get("MODEL_VERBOSE"))
#: Generous: a step takes 0.4 s on average and 3 s at worst, an example's setup and drain
#: up to 45 s.
TEST_TIMEOUT_S = 120 + EXAMPLES * (45 + 3 * STEPS)

ORGS = ("org_a", "org_b")
PROBE_ORG = "org_probe"
TYPES = ("fan.created", "purchase.completed", "email.sent")
#: Seconds between two probe events of the application.
PROBE_EVERY_S = 0.25
#: outbox.page_size: small, so that a flood is many pages.
PAGE_SIZE = 200
#: Events of one flood: more than the daemon holds in memory for one webhook (at least 512
#: jobs, or a page), so a flooded webhook's backlog also waits in the database.
FLOOD_EVENTS = 800
#: rate_limit.events_per_minute, the limit of webhooks without one of their own: high, so
#: that a flood drains in seconds where no explicit limit holds it back.
DEFAULT_RATE_LIMIT = 60_000
#: Webhooks the machine may create per example (each has its own receiver).
MAX_WEBHOOKS = 6
#: Seconds without any request (and nothing owed) that end the final drain.
QUIET_S = 2.5
#: Longest wait for the daemon to deliver what it owes at the end of an example.
DRAIN_BOUND_S = 30.0
#: Longest wait for a daemon to start, or to stop after SIGTERM.
PROCESS_WAIT_S = 20.0
SECRET = "whsec_model_test_secret_0123456789"
#: Failing examples whose full report (violations and steps) the failure message shows.
REPORTED_EXAMPLES = 3
#: Lines of a daemon log that mean it failed on its own.
BROKEN_LOG_EVENTS = ("task_failed", "lane_failed", "webhooks_invalid")


@dataclass
class Run:
    """What the whole test shares across examples: tools, counters, the failing examples."""

    tmp_path: Path
    tls_ca: Path
    host: ms.ReceiverHost
    daemons: list[Daemon]
    seed: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("examples", "steps", "kills", "restarts", "events", "requests", "webhooks", "probes"),
        0))
    #: Per failing example: (its number, the invariants it broke, its report).
    failures: list[tuple[int, list[int], str]] = field(default_factory=list)


class Abort(Exception):
    """The example cannot go on (the daemon or the CLI misbehaved); the reason is recorded."""


def step(func: Callable[..., Any]) -> Callable[..., Any]:
    """A rule's body: skipped once the example is over, counted, aborting cleanly."""

    @functools.wraps(func)
    def wrapper(self: DeliveryModel, **kwargs: Any) -> Any:
        if self.idle:
            return None
        try:
            if not self.started:
                self.setup()
            self.run.counts["steps"] += 1
            return func(self, **kwargs)
        except Abort:
            self.idle = True
            return None
        except BaseException:
            self.idle = True  # a harness error or the test's timeout: teardown only cleans up
            raise

    return wrapper


class DeliveryModel(RuleBasedStateMachine):
    """One example: a fresh pair of databases, a daemon, receivers; steps; a drain; the checks."""

    webhooks = Bundle("webhooks")

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run
        self.idle = False
        self.violations: list[ms.Violation] = []
        self.record = ms.Record(t0=time.time(), probe_org=PROBE_ORG)
        self.receivers: list[ms.Receiver] = []
        self.daemon: Daemon | None = None
        self.conn: sqlite3.Connection | None = None
        self.app: ms.Application | None = None
        self.markers = itertools.count()
        self.traffic = (1.0, 0)
        self.started = False

    # -- harness ------------------------------------------------------------------------------

    def fail(self, invariant: int, text: str) -> None:
        self.violations.append(ms.Violation(invariant, text))

    def abort(self, text: str) -> None:
        """Record a health violation (invariant 0) and end the example."""
        self.fail(0, text)
        self.record.log(f"ABORT: {text}")
        raise Abort(text)

    def cli(self, *args: str) -> Any:
        result = run_cli(*args, "--json", config_path=self.config_path, cwd=self.folder)
        if result.returncode != 0:
            self.abort(f"`nevent-dispatch {' '.join(args)}` exited {result.returncode}: "
                       f"{result.stderr.strip()[-500:]}")
        return orjson.loads(result.stdout)

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if \
            self.log_path.exists() else ""
        return "\n      ".join(text.splitlines()[-lines:])

    def start_daemon(self, how: str) -> None:
        began = time.time()
        starts = self._count_starts()
        assert self.daemon is not None
        self.daemon.start()
        self.record.epochs.append(ms.Epoch(time.time()))
        deadline = time.monotonic() + PROCESS_WAIT_S
        while self._count_starts() == starts:
            proc = self.daemon.proc
            assert proc is not None
            if proc.poll() is not None:
                self.record.epochs[-1].stopped = time.time()
                self.abort(f"the daemon exited {proc.returncode} while starting ({how}):\n"
                           f"      {self.log_tail()}")
            if time.monotonic() > deadline:
                self.abort(f"the daemon was not started {PROCESS_WAIT_S} s after {how}:\n"
                           f"      {self.log_tail()}")
            time.sleep(0.02)
        self.record.restarts.append((began, time.time(), how))

    def _count_starts(self) -> int:
        return self.log_path.read_bytes().count(b'"daemon_started"') if self.log_path.exists() else 0

    def stop_daemon(self, how: str) -> None:
        """SIGTERM (drain) or SIGKILL, and wait for the process to end."""
        assert self.daemon is not None and self.daemon.proc is not None
        if how == "SIGKILL":
            self.daemon.stop()
        else:
            self.daemon.signal(signal.SIGTERM)
            try:
                code = self.daemon.wait(PROCESS_WAIT_S)
            except subprocess.TimeoutExpired:
                self.daemon.stop()
                self.record.epochs[-1].stopped = time.time()
                self.abort(f"the daemon did not stop within {PROCESS_WAIT_S} s of SIGTERM")
            if code != 0:
                self.record.epochs[-1].stopped = time.time()
                self.abort(f"the daemon exited {code} after SIGTERM:\n      {self.log_tail()}")
        self.record.epochs[-1].stopped = time.time()

    def hook_state(self, hook: ms.Webhook, value: str, *args: str) -> None:
        """Run a CLI command that changes activity; record the change if it is one."""
        began = time.time()
        self.cli(*args)
        if hook.state() != value:
            hook.activity.append(ms.Change(began, time.time(), value))

    # -- setup --------------------------------------------------------------------------------

    @initialize(pace=st.sampled_from([0.1, 0.3, 1.0]), seed=st.integers(0, 2**32 - 1))
    def choose_traffic(self, pace: float, seed: int) -> None:
        """The application's pace (mean seconds between its transactions) and choices."""
        self.traffic = (pace, seed)

    def setup(self) -> None:
        """Databases, probe webhook, daemon, application: before the example's first rule.

        Done lazily so that an example without rules (Hypothesis makes some) costs nothing.
        """
        self.started = True
        self.run.counts["examples"] += 1
        number = self.run.counts["examples"]
        self.folder = self.run.tmp_path / f"example{number}"
        self.folder.mkdir()
        self.log_path = self.folder / "daemon.log"
        config = Config().replace(
            database={"outbox": self.folder / "app.db", "state": self.folder / "state.db"},
            delivery={"allow_private_networks": True, "ca_file": self.run.tls_ca,
                      "timeout": ms.TIMEOUT_S, "retry_schedule": ms.RETRY_SCHEDULE,
                      "shutdown_grace": 1.0},
            batch={"max_wait": ms.BATCH_MAX_WAIT_S, "max_events": ms.BATCH_MAX_EVENTS},
            outbox={"page_size": PAGE_SIZE},
            rate_limit={"burst": ms.BURST, "events_per_minute": DEFAULT_RATE_LIMIT},
        )
        self.config_path = toml_config(self.folder / "daemon.toml", config)
        self.record.t0 = time.time()
        pace, seed = self.traffic
        self.record.log(f"example {number} in {self.folder}: application pace {pace} s, "
                        f"seed {seed}")
        init = run_cli("init", config_path=self.config_path, cwd=self.folder)
        if init.returncode != 0:
            self.abort(f"`nevent-dispatch init` exited {init.returncode}: {init.stderr.strip()}")
        self.conn = sqlite3.connect(config.database.outbox, timeout=30)
        probe = self._create(PROBE_ORG, batch=False, rate_limit=None, active=True, key="probe")
        self.daemon = Daemon(self.config_path, self.log_path)
        self.run.daemons.append(self.daemon)
        self.start_daemon("start")
        self.record.log(f"probe webhook {probe.describe()}; daemon started")
        self.app = ms.Application(config.database.outbox, self.record, self.markers, orgs=ORGS,
                                  types=TYPES, probe_org=PROBE_ORG, pace=pace,
                                  probe_every=PROBE_EVERY_S, seed=seed)
        self.app.start()

    def _create(self, org: str, *, batch: bool, rate_limit: int | None, active: bool,
                key: str) -> ms.Webhook:
        receiver = self.run.host.start(key)
        self.receivers.append(receiver)
        args = ["webhooks", "create", "--org", org, "--url", receiver.url, "--name", f"model {key}",
                "--secret", SECRET]
        if batch:
            args.append("--batch")
        if rate_limit is not None:
            args += ["--rate-limit", str(rate_limit)]
        began = time.time()
        created = self.cli(*args)
        hook = ms.Webhook(key=key, id=created["id"], org=org, receiver=receiver, batch=batch)
        hook.activity.append(ms.Change(began, time.time(), "inactive"))
        hook.limits.append(ms.Change(began, time.time(), rate_limit))
        self.record.webhooks.append(hook)
        self.run.counts["webhooks"] += 1
        if active:
            self.hook_state(hook, "active", "webhooks", "enable", hook.id)
        return hook

    # -- rules ----------------------------------------------------------------------------------

    @rule(org=st.sampled_from(ORGS), type_=st.sampled_from(TYPES), count=st.integers(1, 30))
    @step
    def emit(self, org: str, type_: str, count: int) -> None:
        """A burst: the application commits ``count`` events of one organization at once."""
        assert self.conn is not None
        ms.commit(self.conn, self.record, self.markers, [(org, type_)] * count)
        self.record.log(f"emit {count} × {type_} for {org} (from n={self.record.events[-count].n})")

    @rule(org=st.sampled_from(ORGS), type_=st.sampled_from(TYPES))
    @step
    def flood(self, org: str, type_: str) -> None:
        """A backlog: ``FLOOD_EVENTS`` events of one organization in one transaction."""
        assert self.conn is not None
        ms.commit(self.conn, self.record, self.markers, [(org, type_)] * FLOOD_EVENTS)
        self.record.log(f"flood of {FLOOD_EVENTS} × {type_} for {org} (from "
                        f"n={self.record.events[-FLOOD_EVENTS].n})")

    @precondition(lambda self: len(self.record.webhooks) <= MAX_WEBHOOKS)  # and the probe
    @rule(target=webhooks, org=st.sampled_from(ORGS), batch=st.booleans(),
          rate_limit=st.none() | st.integers(30, 120), active=st.sampled_from([True, True, False]))
    @step
    def create_webhook(self, org: str, batch: bool, rate_limit: int | None,
                       active: bool) -> ms.Webhook | None:
        key = f"w{len(self.record.webhooks)}"
        hook = self._create(org, batch=batch, rate_limit=rate_limit, active=active, key=key)
        self.record.log(f"create {hook.describe()}{', enabled' if active else ''}")
        return hook

    @rule(hook=webhooks)
    @step
    def disable(self, hook: ms.Webhook | None) -> None:
        if hook is not None:
            self.hook_state(hook, "inactive", "webhooks", "disable", hook.id)
            self.record.log(f"disable {hook.key}")

    @rule(hook=webhooks)
    @step
    def enable(self, hook: ms.Webhook | None) -> None:
        if hook is not None:
            self.hook_state(hook, "active", "webhooks", "enable", hook.id)
            self.record.log(f"enable {hook.key}")

    @rule(hook=consumes(webhooks))
    @step
    def delete(self, hook: ms.Webhook | None) -> None:
        if hook is not None:
            self.hook_state(hook, "deleted", "webhooks", "delete", hook.id, "--yes")
            self.record.log(f"delete {hook.key}")

    @rule(hook=webhooks, rate_limit=st.none() | st.integers(30, 120))
    @step
    def set_rate_limit(self, hook: ms.Webhook | None, rate_limit: int | None) -> None:
        if hook is None:
            return
        self._set_limit(hook, rate_limit)
        self.record.log(f"rate limit of {hook.key}: {rate_limit or 'default'}")

    def _set_limit(self, hook: ms.Webhook, rate_limit: int | None) -> None:
        began = time.time()
        option = ["--rate-limit", str(rate_limit)] if rate_limit else ["--default-rate-limit"]
        self.cli("webhooks", "update", hook.id, *option)
        if hook.limits[-1].value != rate_limit:
            hook.limits.append(ms.Change(began, time.time(), rate_limit))

    @rule(hook=webhooks)
    @step
    def toggle_batch(self, hook: ms.Webhook | None) -> None:
        if hook is not None:
            # The name is restated because `update` refuses, as "nothing to change", a command
            # whose only options are --no-… flags.
            began = time.time()
            self.cli("webhooks", "update", hook.id, "--no-batch" if hook.batch else "--batch",
                     "--name", f"model {hook.key}")
            hook.batch = not hook.batch
            hook.modes.append(ms.Change(began, time.time(), hook.batch))
            self.record.log(f"batch mode of {hook.key}: {'on' if hook.batch else 'off'}")

    @rule(hook=webhooks, mode=st.sampled_from(ms.MODES))
    @step
    def set_receiver_mode(self, hook: ms.Webhook | None, mode: str) -> None:
        if hook is not None:
            hook.receiver.set_mode(mode)
            self.record.log(f"receiver of {hook.key}: {mode}")

    @rule(how=st.sampled_from(["SIGTERM", "SIGKILL"]))
    @step
    def restart_daemon(self, how: str) -> None:
        began = time.time()
        self.stop_daemon(how)
        self.run.counts["kills" if how == "SIGKILL" else "restarts"] += 1
        self.start_daemon(how)
        # The restart began when the signal was sent.
        self.record.restarts[-1] = (began, *self.record.restarts[-1][1:])
        self.record.log(f"{how} and start again (ready after {time.time() - began:.2f} s)")

    @rule(seconds=st.sampled_from([0.2, 0.5, 1.0]))
    @step
    def let_time_pass(self, seconds: float) -> None:
        time.sleep(seconds)
        self.record.log(f"sleep {seconds} s")

    # -- checked after every step ---------------------------------------------------------------

    @invariant()
    def daemon_runs_and_isolates_organizations(self) -> None:
        """The daemon has not died on its own; no request so far crossed an organization."""
        if self.idle or not self.started or self.daemon is None or self.daemon.proc is None:
            return
        if self.daemon.proc.poll() is not None:
            self.record.epochs[-1].stopped = time.time()
            self.fail(0, f"the daemon exited {self.daemon.proc.returncode} on its own:\n"
                         f"      {self.log_tail()}")
            self.record.log("ABORT: the daemon died")
            self.idle = True
            return
        for violation in ms.check_wire(self.record):
            if violation not in self.violations:
                self.violations.append(violation)

    # -- the end of an example ------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.started and not self.idle:
                self._finish()
            if self.app is not None:
                self.run.counts["events"] += len(self.record.events)
            self.run.counts["requests"] += sum(len(r.hits) for r in self.receivers)
            if VERBOSE and self.record.steps:
                print("\n".join(self.record.steps))
            if self.violations:
                number = self.run.counts["examples"]
                self.run.failures.append((number, sorted({v.invariant for v in self.violations}),
                                          ms.report(self.violations, self.record,
                                                    f"example {number}: {len(self.violations)} "
                                                    f"violation(s)")))
        finally:
            if self.app is not None:
                self.app.stop()
            if self.daemon is not None and self.daemon.proc is not None:
                self.daemon.stop()
            self.run.host.stop(self.receivers)
            if self.conn is not None:
                self.conn.close()

    def _finish(self) -> None:
        """Heal the receivers, lift the limits, drain, stop the daemon, check everything."""
        try:
            assert self.app is not None
            self.app.stop()
            if self.app.error is not None:
                self.abort(f"the application's publishing failed: {self.app.error!r}")
            self.record.final = {w.key: w.state() for w in self.record.webhooks}
            self.record.log("end of steps: every receiver ok, explicit rate limits reset")
            for hook in self.record.webhooks:
                hook.receiver.set_mode("ok")
            for hook in self.record.webhooks:
                if hook.state() != "deleted" and hook.limits[-1].value is not None:
                    self._set_limit(hook, None)
            self._drain()
            self.stop_daemon("SIGTERM")
        except Abort:
            return
        log = self.log_path.read_text(encoding="utf-8", errors="replace")
        broken = [line for line in log.splitlines()
                  if any(f'"event":"{name}"' in line for name in BROKEN_LOG_EVENTS)
                  or "Traceback" in line]
        if broken:
            self.fail(0, f"the daemon logged failures of its own: {broken[:3]}")
        for violation in ms.check(self.record):
            if violation not in self.violations:
                self.violations.append(violation)
        latencies = sorted(x for _, x in ms.probe_latencies(self.record) if x is not None)
        self.run.counts["probes"] += len(latencies)
        if latencies:
            self.record.log(f"probe: {len(latencies)} events covered, median "
                            f"{latencies[len(latencies) // 2]:.3f} s, max {latencies[-1]:.3f} s")

    def _drain(self) -> None:
        began = time.monotonic()
        while time.monotonic() - began < DRAIN_BOUND_S:
            time.sleep(0.2)
            last = max((h.arrived for r in self.receivers for h in r.snapshot()), default=0.0)
            if not ms.owed(self.record) and time.time() - last >= QUIET_S:
                self.record.log(f"drained in {time.monotonic() - began:.1f} s")
                return
        missing = ms.owed(self.record)
        self.record.log(f"drain bound of {DRAIN_BOUND_S} s reached, {len(missing)} deliveries owed")


@pytest.fixture
def model_run(tls: dict[str, Any], tmp_path: Path) -> Iterator[Run]:
    """Receivers' thread and every daemon of the test, stopped at the end even on failure."""
    host = ms.ReceiverHost(server_context(tls["cert"]))
    run = Run(tmp_path=tmp_path, tls_ca=tls["ca_file"], host=host, daemons=[],
              seed=int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32)))
    try:
        yield run
    finally:
        try:
            for daemon in run.daemons:
                if daemon.proc is not None:
                    daemon.stop()
        finally:
            host.close()


def conclude(run: Run, figures: Any, name: str) -> None:
    """Print and record the counts; fail with the report of every failing example."""
    counts = run.counts
    summary = " ".join(f"{k}={v}" for k, v in counts.items())
    print(f"delivery-core model ({name}): {summary} failing_examples={len(run.failures)} "
          f"{SEED_ENV}={run.seed}")
    figures.add(f"model_examples.{name}", counts["examples"])
    for key in ("steps", "kills", "restarts", "events", "requests", "probes"):
        figures.add(f"model_{key}", counts[key])
    figures.add("model_failing_examples", len(run.failures))
    figures.set("model_invariants", [ms.INVARIANTS[n] for n in sorted(ms.INVARIANTS)])
    if not run.failures:
        return
    broken = sorted({n for _, invariants, _ in run.failures for n in invariants})
    lines = [f"the delivery core broke invariant(s) {broken} in {len(run.failures)} of "
             f"{counts['examples']} examples ({summary}; {SEED_ENV}={run.seed})"]
    lines += [f"  [{n}] {ms.INVARIANTS[n]}: examples "
              f"{[number for number, invariants, _ in run.failures if n in invariants]}"
              for n in broken]
    lines += ["", *(text for _, _, text in run.failures[:REPORTED_EXAMPLES])]
    if len(run.failures) > REPORTED_EXAMPLES:
        lines.append(f"(reports of {len(run.failures) - REPORTED_EXAMPLES} more failing "
                     f"examples left out)")
    pytest.fail("\n".join(lines), pytrace=False)


@pytest.mark.slow
@pytest.mark.timeout(TEST_TIMEOUT_S)
def test_random_histories_keep_the_delivery_core_invariants(model_run: Run, figures: Any) -> None:
    """Random emits, webhook changes, receiver faults and restarts: the six invariants hold."""
    run = model_run

    def machine() -> DeliveryModel:
        return DeliveryModel(run)

    # Any factory of machines will do (the stub asks for the class).
    run_state_machine_as_test(seed(run.seed)(machine), settings=settings(  # type: ignore[arg-type]
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
        # One example costs tens of seconds and never replays its timing: generate only.
        phases=[Phase.generate], database=None, print_blob=False,
        suppress_health_check=list(HealthCheck)))
    figures.add("fuzz_examples.model.delivery_core", run.counts["examples"])
    conclude(run, figures, "random")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_webhook_disabled_and_enabled_during_a_rate_limited_backlog_keeps_the_invariants(
        model_run: Run, figures: Any) -> None:
    """The model's steps in a fixed order: a 120/min webhook flooded, disabled 1 s, enabled again.

    A history random examples reach only now and then (a flood, then a disable and an
    enable of the same rate-limited webhook, then more events for it while its backlog
    is taken up again), pinned as Hypothesis' ``@example`` pins one for a plain test.
    """
    machine = DeliveryModel(model_run)
    machine.choose_traffic(pace=0.1, seed=1)
    try:
        hook = machine.create_webhook(org="org_a", batch=False, rate_limit=120, active=True)
        machine.let_time_pass(seconds=1.0)
        machine.let_time_pass(seconds=1.0)  # the margin: the daemon knows the webhook
        machine.flood(org="org_a", type_="fan.created")
        machine.let_time_pass(seconds=1.0)
        machine.disable(hook=hook)
        machine.let_time_pass(seconds=1.0)
        machine.enable(hook=hook)
        machine.let_time_pass(seconds=1.0)  # the daemon takes the backlog up again
        machine.emit(org="org_a", type_="purchase.completed", count=30)
        machine.let_time_pass(seconds=1.0)
    finally:
        machine.teardown()
    conclude(model_run, figures, "toggle_during_backlog")
