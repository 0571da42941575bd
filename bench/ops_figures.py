"""The operations figures: what the metrics' counters cost the delivery path.

Owns the ``metrics`` figure: the non-batch drain of the ``drain`` figure run twice in
each round, with ``[metrics] enabled = true`` (the default: every attempt bumps the
counters and histograms of ``pipeline/progress.py``) and with it off (nothing is
counted), the order alternating between rounds, so that the ratio compares runs
made minutes apart on the same machine. It decides nothing about the daemon.
"""

from __future__ import annotations

from .fixtures import one_per_org
from .harness import Bench

#: Webhooks of the drain (as in ``scenarios.drain``).
WEBHOOKS = 100
#: The ratio the counters must keep (metrics on ÷ off).
TARGET = 0.97
#: The daemon's setting of the run without counters.
OFF = {"metrics.enabled": "false"}


def metrics_cost(b: Bench) -> None:
    """Non-batch drain with metrics on, beside the same drain with them off."""
    n = b.sizes.events
    layout = one_per_org("drain", WEBHOOKS, lambda i: b.fast.url(f"/ok/{i}"))
    outbox = b.outbox("drain", n, WEBHOOKS)
    steady: dict[bool, float] = {}
    spawn: dict[bool, float] = {}
    for on in b.alternating():
        daemon, folder = b.start_daemon("metrics-on" if on else "metrics-off", layout, outbox, n,
                                        settings=None if on else OFF)
        daemon.watch(batch=False, timeout_s=b.timeout(n))
        result = b.finish("metrics", daemon, folder)
        steady[on], spawn[on] = result.steady_rate(), result.rate()
    fig = b.figure("metrics", f"Drain, non-batch: {n:,} events, metrics on (after start-up)",
                   "deliveries/s", limit_label="the same drain with metrics.enabled = false",
                   target=f"≥ {TARGET}× off", check=lambda _value, ratio: ratio >= TARGET)
    fig.samples.append(steady[True])
    fig.limits.append(steady[False])
    fig.details.append(f"from spawn: {spawn[True]:,.0f}/s on, {spawn[False]:,.0f}/s off "
                       f"({spawn[True] / spawn[False]:.3f}×)")
