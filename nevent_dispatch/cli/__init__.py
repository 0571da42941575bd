"""The ``nevent-dispatch`` command: one function per verb, registered in ``COMMANDS``.

Owns argument parsing, the choice of config file (``--config``, else
$NEVENT_DISPATCH_CONFIG, else the embedded defaults), the text and ``--json``
renderings, and the one place where errors become exit codes:

    0    done
    1    refused input or unknown id (any ``DispatchError`` but a config error)
    2    bad command line or bad config
    70   internal error (a bug); traceback with NEVENT_DISPATCH_DEBUG=1
    130  interrupted

It must not validate webhooks (``registry.py`` does) or run SQL (``store.py``
does). It reads the wall clock (``clock.SYSTEM``) once per command and hands
it down. Nothing here prints a secret, except the generated one, once, at
creation.

To add a command: write ``_cmd_name(args, config) -> int`` and, if it takes
options, ``_args_name(parser)``, then add a ``Command`` to ``COMMANDS``. A
command path of two words (``("deliveries", "list")``) puts it under a group
whose help is in ``GROUPS``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from collections.abc import Sequence

from .. import __version__
from ..config import CONFIG_ENV, load
from ..errors import ConfigError, DispatchError
from . import deliveries, local, prune, shell, status, webhooks
from .common import (
    DEBUG_ENV,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    PROG,
    Command,
    hint,
)

# -- registration ----------------------------------------------------------------------------

#: Help of the command groups (first word of a two-word command).
GROUPS: dict[str, str] = {
    "webhooks": "create, inspect, change and test webhooks",
    "deliveries": "inspect the delivery history and retry failed deliveries",
}

#: Every command, in the order ``--help`` lists them.
COMMANDS: tuple[Command, ...] = (
    *webhooks.COMMANDS[:1], *deliveries.COMMANDS[:1], *local.COMMANDS,
    *webhooks.COMMANDS[1:], *deliveries.COMMANDS[1:], *status.COMMANDS, *prune.COMMANDS,
    *shell.COMMANDS,
)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    """The argument parser: ``--config`` is accepted before or after the command."""
    # Sub-parsers must not overwrite a --config given before the command with their default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"TOML config file (default: ${CONFIG_ENV}, else built-in defaults)")

    parser = argparse.ArgumentParser(
        prog=PROG, description="Webhook delivery daemon of the Nevent platform.")
    parser.add_argument("--config", metavar="PATH", default=None,
                        help=f"TOML config file (default: ${CONFIG_ENV}, else built-in defaults)")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    top = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for command in commands:
        *group_path, verb = command.path
        actions = top
        if group_path:
            (group,) = group_path
            if group not in groups:
                group_parser = top.add_parser(group, help=GROUPS.get(group), parents=[common],
                                              description=GROUPS.get(group))
                groups[group] = group_parser.add_subparsers(
                    title="commands", metavar="COMMAND", required=True)
            actions = groups[group]
        sub = actions.add_parser(verb, help=command.help, description=command.help,
                                 parents=[common])
        command.arguments(sub)
        sub.set_defaults(handler=command.run)
    return parser


def fail(message: str) -> None:
    line = " ".join(message.split("\n"))
    print(f"{PROG}: {hint(line)}", file=sys.stderr)


#: Options whose value may look like an option: ``--since -1h`` is a duration ago.
_DASHED_VALUES = ("--since",)


def _join_dashed_values(argv: Sequence[str]) -> list[str]:
    """``--since -1h`` → ``--since=-1h`` (argparse would take ``-1h`` for an option)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in _DASHED_VALUES and arg.startswith("-") and arg[1:2].isdigit():
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (usage errors exit 2 through argparse)."""
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:  # the shell asks for completions (``completion``)
        import argcomplete
        argcomplete.autocomplete(parser)
    args = parser.parse_args(_join_dashed_values(sys.argv[1:] if argv is None else argv))
    try:
        config = load(args.config)
        return int(args.handler(args, config))
    except ConfigError as exc:
        fail(str(exc))
        return EXIT_USAGE
    except DispatchError as exc:
        fail(str(exc))
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``| head``): what it wanted was written; say nothing more.
        _silence_stdout()
        return EXIT_OK
    except Exception as exc:
        if os.environ.get(DEBUG_ENV) == "1":
            traceback.print_exc()
        fail(f"internal error: {type(exc).__name__}: {exc}")
        return EXIT_INTERNAL


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of a closed pipe does
    not print an error of its own at exit."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
