"""``completion``: the shell code that completes ``nevent-dispatch`` commands and options.

Owns nothing but the hand-over to argcomplete, imported only by this command and when
the shell asks for completions (``_ARGCOMPLETE`` set), so no other command pays for it.
"""

from __future__ import annotations

import argparse

from ..config import Config
from .common import EXIT_OK, PROG, Command

SHELLS = ("bash", "zsh", "fish", "tcsh", "powershell")


def _args_completion(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete in")


def _cmd_completion(args: argparse.Namespace, config: Config) -> int:
    import argcomplete

    print(argcomplete.shellcode([PROG], shell=args.shell), end="")
    return EXIT_OK


COMMANDS: tuple[Command, ...] = (
    Command(("completion",), "print shell completion code: eval \"$(nevent-dispatch completion "
            "bash)\"", _cmd_completion, _args_completion),
)
