"""What the daemon's process does before delivering: collector tuning, imports kept lean."""

from __future__ import annotations

import subprocess
import sys

import orjson

from nevent_dispatch.daemon import GC_THRESHOLDS

PROBE = """
import gc, orjson
from nevent_dispatch import daemon

async def probe(config, **options):
    print(orjson.dumps({"thresholds": gc.get_threshold(), "frozen": gc.get_freeze_count()}).decode())

daemon.serve = probe
daemon.run(None)
"""


def test_run_freezes_start_up_objects_and_raises_thresholds():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    seen = orjson.loads(out)
    assert tuple(seen["thresholds"]) == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # above Python's default
    assert seen["frozen"] > 10_000  # the imported modules' objects


def test_the_command_line_does_not_import_the_http_server():
    """``run`` starts without aiohttp's server side (only ``listen`` and ``demo`` need it)."""
    probe = "import sys, nevent_dispatch.cli; print('aiohttp.web' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "False"
