"""``python -m nevent_dispatch``: the same as the ``nevent-dispatch`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
