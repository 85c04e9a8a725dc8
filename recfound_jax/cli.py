"""What every command line shares: absl flags, `parse`, `attempt` and `run`.

Each command defines its flags on a ``flags.FlagValues()`` of its own rather than absl's global one, so
one process can import several commands (the tests do) though they share names such as ``--run``.
Its ``main(argv=None) -> int`` parses with `parse` and can be called with a list of arguments;
``python -m`` runs it through `run`, that is absl's ``app.run``.
"""
from __future__ import annotations

import os
import platform
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags, logging

HELP = ("--help", "-h", "-?", "--helpshort", "--helpfull")
USAGE_ERROR = 2  # the exit status of a bad command line (argparse's)
FAILED = 2  # the exit status of a command refused for a reason `attempt` names
TERMINATED = 128 + signal.SIGTERM  # the shell's status of a process ended by SIGTERM
HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"


def help_text(flag_values: flags.FlagValues, doc: str) -> str:
    """The command's docstring, then every flag with its help text and default."""
    listing = flag_values.get_help(include_special_flags=False).strip("\n")
    return f"{doc.strip()}\n\nflags:\n{listing}"


def usage_error(message: str) -> NoReturn:
    """Exit with `USAGE_ERROR` after one line naming what is wrong with the command line."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def parse(flag_values: flags.FlagValues, argv: Sequence[str] | None, doc: str) -> None:
    """Set ``flag_values`` from ``argv`` (default: the program's own arguments), every flag not given at
    its default. ``--help`` prints `help_text` and exits 0; an unknown, missing or bad flag, or a positional
    argument, is a `usage_error` naming it."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(arg in HELP for arg in args):
        print(help_text(flag_values, doc))
        raise SystemExit(0)
    for name in [name for name in flag_values if "." in name]:  # config_flags' --config.key flags of a former parse
        delattr(flag_values, name)
    flag_values.unparse_flags()
    command_line = [sys.argv[0], *args]
    program_argv, sys.argv = sys.argv, command_line  # config_flags finds its --config.key overrides in sys.argv
    try:
        rest = flag_values(command_line)
    except flags.Error as err:
        usage_error(str(err))
    finally:
        sys.argv = program_argv
    if len(rest) > 1:
        usage_error(f"unexpected arguments {rest[1:]}; every argument is a --flag (--help lists them)")


def attempt(action: Callable[[], str], *errors: type[Exception]) -> int:
    """Run ``action`` and print the line it returns: 0. One of ``errors`` is printed as one line
    "error: ..." on stderr instead: `FAILED`."""
    try:
        done = action()
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        return FAILED
    print(done)
    return 0


def run(main: Callable[[Sequence[str]], int]) -> NoReturn:
    """Run ``main`` as the program under absl's ``app.run``; its return value is the exit status.

    ``main`` parses the arguments itself (`parse`); absl's own flags stay at their defaults, and absl
    logs warnings and errors only (Orbax logs every file it writes at INFO). SIGTERM exits through
    `SystemExit`, so ``finally`` blocks run (an atomic build removes its temporary folder); the trainer
    replaces this with a handler of its own once its inputs are ready. First, `restart_with_hugepages`.
    """
    restart_with_hugepages()

    def parsed(argv: list[str]) -> list[str]:
        flags.FLAGS.mark_as_parsed()
        return argv

    def start(argv: list[str]) -> int:
        logging.set_verbosity(logging.WARNING)
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return main(argv[1:])

    app.run(start, flags_parser=parsed)


def restart_with_hugepages() -> None:
    """Re-execute this command with glibc's ``malloc.hugetlb`` tunable, unless GLIBC_TUNABLES is set already,
    RECFOUND_HUGEPAGES is 0, or this is not Linux with glibc 2.35 or later.

    XLA on the CPU maps each step's temporary buffers afresh, and with 4 KiB pages the kernel's page faults
    take much of a small model's step; with the tunable, malloc asks for transparent huge pages instead
    (measured: docs/results.md, scripts/bench_hugepages.py). It is read when the process starts, hence the exec.
    """
    libc, version = platform.libc_ver()
    if (sys.platform != "linux" or libc != "glibc" or "GLIBC_TUNABLES" in os.environ
            or os.environ.get("RECFOUND_HUGEPAGES") == "0" or tuple(map(int, version.split(".")[:2])) < (2, 35)):
        return
    os.environ["GLIBC_TUNABLES"] = HUGEPAGE_TUNABLE
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def _exit_on_sigterm(signum: int, frame: object) -> NoReturn:
    print("error: stopped by SIGTERM", file=sys.stderr)
    raise SystemExit(TERMINATED)
