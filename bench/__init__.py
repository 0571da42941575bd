"""Benchmark of the real ``nevent-dispatch run`` daemon against the machine's own limit.

``python -m bench`` (or ``python bench/run.py``) starts a fast HTTPS receiver on
127.0.0.1 (nginx when installed, else an aiohttp process), measures a bare
aiohttp client against it as the limit of the stack, then runs the daemon as a
subprocess — exactly as a user starts it — on preloaded or steadily fed
outboxes, and prints every figure beside that limit. It writes the same table
to ``docs/performance.md``. It is not a test: no figure makes it fail.

The data flow of one figure::

    fixtures (config, webhooks, outbox) ─▶ daemon (nevent-dispatch run) ─HTTPS─▶ receivers
        ▲ publisher (steady publish())           │ state DB (read-only polls, final counts)
        └─ scenarios (one function per figure) ◀─┘ ─▶ report (table, docs/performance.md)

Every process it starts is in its own session and is stopped by ``procs.py``,
even on failure or Ctrl-C. It talks to 127.0.0.1 only and installs nothing.
"""
