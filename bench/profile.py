"""Where the daemon's CPU goes during a drain (``--profile``; not a figure).

Owns one extra drain run under ``py-spy record`` (sampling, non-blocking) and the
summary of its collapsed stacks: the functions of ``nevent_dispatch`` by share
of samples with them on the stack (inclusive) and as the innermost frame of the
package (their own code plus what they call outside it), and the leaf frames
overall. py-spy is optional and never installed by the benchmark.
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from .fixtures import one_per_org

if TYPE_CHECKING:
    from .harness import Bench

PACKAGE = "nevent_dispatch/"
SAMPLES_PER_S = 200


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.is_file() else shutil.which("py-spy")


def profile_drain(b: Bench, output: Path, *, batch: bool = False) -> None:
    from .scenarios import WEBHOOKS

    py_spy = _py_spy()
    if py_spy is None:
        b.note("--profile: py-spy is not installed (pip install py-spy); no profile taken")
        return
    n = b.sizes.events
    layout = one_per_org("drain-batch" if batch else "drain", WEBHOOKS,
                         lambda i: b.fast.url(f"/ok/{i}"), batch=batch)
    outbox = b.outbox("drain", n, WEBHOOKS)
    daemon, folder = b.start_daemon("profile", layout, outbox, n)
    spy = b.procs.start([py_spy, "record", "--pid", str(daemon.pid), "--rate",
                         str(SAMPLES_PER_S), "--threads", "--function", "--format", "raw",
                         "--output", str(output)], log=folder / "py-spy.log")
    daemon.watch(batch=batch, timeout_s=b.timeout(n))
    b.finish("profile", daemon, folder)
    try:
        spy.wait(30)  # py-spy writes its file once the daemon is gone
    except Exception:  # noqa: BLE001 - a stuck profiler must not stop the benchmark
        pass
    b.procs.stop(spy)
    if not output.exists():
        b.note(f"--profile: py-spy wrote nothing; see {folder / 'py-spy.log'}")
        return
    print(f"\nprofile of a {n:,}-event {'batch' if batch else 'non-batch'} drain ({output}):")
    print(summarize(output.read_text(encoding="utf-8", errors="replace")))


def _thread_name(frame: str) -> str:
    """``thread (123): MainThread`` → ``MainThread``; an unnamed thread keeps its id."""
    _, _, name = frame.partition(": ")
    return name or frame


def _frames(line: str) -> tuple[list[str], int]:
    stack, _, count = line.rpartition(" ")
    return stack.split(";"), int(count)


def summarize(collapsed: str, top: int = 15) -> str:
    """Shares of the samples by thread, then where the event loop's (main) thread spends them.

    Threads waiting for the CPU count as busy for py-spy, so on a pinned daemon the
    thread shares overstate the SQLite threads: the per-thread CPU seconds in the
    *Runs* section are the reliable split. The function shares are of the main
    thread's samples.
    """
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in collapsed.splitlines():
        try:
            frames, count = _frames(line)
        except ValueError:
            continue
        thread = "(one thread)"
        if frames[0].startswith("thread ("):  # --threads puts the thread first
            thread = _thread_name(frames[0])
            frames = frames[1:] or ["(no Python frame)"]
        threads[thread] += count
        if thread not in ("MainThread", "(one thread)"):
            continue
        ours = [f for f in frames if PACKAGE in f]
        for frame in set(ours):
            inclusive[frame] += count
        innermost[ours[-1] if ours else "(outside nevent_dispatch)"] += count
        leaves[frames[-1]] += count
    total = sum(threads.values())
    main = sum(innermost.values())
    if not total or not main:
        return "  (no samples)"

    def lines(counter: Counter[str], of: int) -> list[str]:
        return [f"  {100 * c / of:5.1f} %  {name}" for name, c in counter.most_common(top)]

    return "\n".join([
        f"  {total:,} samples; by thread (busy or waiting for the CPU):", *lines(threads, total),
        " main thread, nevent_dispatch functions on the stack (inclusive):",
        *lines(inclusive, main),
        " main thread, innermost nevent_dispatch frame (its own code + what it calls outside):",
        *lines(innermost, main),
        " main thread, leaf frames:", *lines(leaves, main),
    ])
