"""The benchmark runs end to end at its smoke size (its figures mean nothing at this size).

It measures the real daemon on 127.0.0.1 only; here it must simply finish, stop
every process it started, and write a page with every figure and target.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_the_smoke_benchmark_writes_every_figure(tmp_path):
    page = tmp_path / "performance.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--receiver", "aiohttp", "--output", str(page),
         "--workdir", str(tmp_path / "scratch")],
        cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = page.read_text(encoding="utf-8")
    for figure in ("Bare client", "Drain, non-batch", "Drain, batch mode", "after start-up",
                   "Failure load", "Fan-out", "Latency at 200 events/s", "Slow receivers",
                   "Peak RSS"):
        assert figure in text, figure
    for target in ("≥ 0.7× bare client", "≥ 100,000 events/s", "< 10 ms", "< 50 ms",
                   "< 150 MB"):
        assert target in text, target
    assert "## Machine" in text and "## How to run" in text
    # Every process it started is gone: no daemon or receiver of this run is left behind.
    if shutil.which("pgrep"):
        leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True,
                                   text=True)
        assert leftovers.stdout.strip() == "", leftovers.stdout


@pytest.mark.timeout(300)
def test_the_benchmark_prints_and_leaves_the_tracked_page_alone_without_write_docs(tmp_path):
    """`python -m bench` as the README shows it must not rewrite docs/performance.md."""
    tracked = ROOT / "docs" / "performance.md"
    before = tracked.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--only", "fanout", "--receiver", "aiohttp",
         "--workdir", str(tmp_path / "scratch")],
        cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Fan-out" in result.stdout
    assert "--write-docs writes" in result.stdout
    assert tracked.read_bytes() == before
