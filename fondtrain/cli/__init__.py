"""The `fondtrain` command line: fire runs the commands of FondtrainCLI (commands.py) after
the typed flag layer (flags.py) has checked and converted every flag.

A UserError from any command prints `error: <sentence>` on stderr and exits with status
2, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fire

from fondtrain import __version__
from fondtrain.cli.commands import FondtrainCLI, commands
from fondtrain.cli.flags import fire_command, wants_help
from fondtrain.cli.help import command_help, overview
from fondtrain.errors import UserError

__all__ = ["FondtrainCLI", "commands", "dispatch", "main", "run_or_exit", "train_command"]


def run_or_exit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call fn(*args, **kwargs); on UserError print `error: ...` to stderr and exit 2."""
    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        if not exc.quiet:  # quiet: the main process prints the same sentence
            message = " ".join(str(exc).split())  # always one line
            # one write per line, so that the lines of several ranks do not interleave
            sys.stderr.write(f"error: {message}\n")
            sys.stderr.flush()
        if exc.agreed:  # every rank is here: leave together, the sentence written first
            import signal

            from fondtrain.runtime import close_process_group, exit_process_group_member

            # the launcher stops the ranks still running when one has exited: let them exit 2
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            close_process_group(barrier=True)
            exit_process_group_member(2)
        raise SystemExit(2) from None


def dispatch(argv: list[str], prog: str | None = None) -> Any:
    """Run command argv[0] with the rest of argv through fire, once every flag has passed the
    typed layer; what the command returns (None after printing a help or the version)."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(overview(commands(), __version__))
        return None
    if argv[0] == "--version":
        print(f"fondtrain {__version__}")
        return None
    table = commands()
    name = argv[0].replace("-", "_")
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        guess = f" (did you mean {close[0].replace('_', '-')}?)" if close else ""
        raise UserError(f"unknown command {argv[0]!r}{guess}: `fondtrain --help` lists the commands.")
    prog = prog or f"fondtrain {argv[0]}"
    if wants_help(argv[1:]):
        print(command_help(prog, table[name]))
        return None
    command = fire_command(name, table[name], argv[1:], prog)
    # the caller prints the result (fire would print it on every rank of a launch)
    return fire.Fire(FondtrainCLI, command=command, name="fondtrain", serialize=lambda result: None)


def train_command(argv: list[str], prog: str = "fondtrain train") -> Path | None:
    """`fondtrain train ARGV`, the one entry of launch/train.py too: the run folder (None after --help)."""
    run_dir = dispatch(["train", *argv], prog)
    return None if run_dir is None else Path(run_dir)


def main(argv: list[str] | None = None) -> None:
    """Console entry point (`fondtrain = "fondtrain.cli:main"`): prints what the command returns."""
    try:
        result = run_or_exit(dispatch, sys.argv[1:] if argv is None else list(argv))
        if result is not None:
            print(result)
        sys.stdout.flush()
        runtime = sys.modules.get("fondtrain.runtime")  # loaded by every command that joins a group
        if runtime is not None:  # (importing it here would load torch for `fondtrain --help`)
            runtime.exit_process_group_member(0)  # under a launcher, once the command has closed its group
    except BrokenPipeError:  # `fondtrain train --help | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
