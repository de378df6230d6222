"""The help of `fondtrain` and its commands, made from the flag tables and the docstrings and
wrapped to the terminal's width (80 columns when piped)."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from typing import Any

from fondtrain.cli.flags import command_options, described, parameters, positional, type_name

BOOLEAN_NOTE = ("Booleans: --flag, --noflag or --flag true|false|yes|no|1|0; `none` clears an "
                "optional value; names are exact (no abbreviations).")


def usage(prog: str, fn: Callable[..., Any]) -> str:
    """`usage: fondtrain eval [RUN] [--FLAG VALUE ...]`."""
    words = [f"{p.name.upper()}..." if p.kind is p.VAR_POSITIONAL else
             p.name.upper() if p.default is p.empty else f"[{p.name.upper()}]" for p in positional(fn)]
    return " ".join(["usage:", prog, *words, "[--FLAG VALUE ...]"])


def _wrap(text: str, indent: int, width: int, more: int = 0) -> list[str]:
    """text as lines of at most `width` columns (a longer word keeps its own line), indented
    by `indent` and continuation lines by `more` on top."""
    return textwrap.wrap(text, width, initial_indent=" " * indent,
                         subsequent_indent=" " * (indent + more), break_long_words=False,
                         break_on_hyphens=False)


def command_help(prog: str, fn: Callable[..., Any]) -> str:
    """Usage, the docstring's text, the boolean rules, and per option its names, type or
    choices, default and description."""
    width = max(shutil.get_terminal_size().columns - 1, 40)
    text, help_of = described(fn)
    lines = [*_wrap(usage(prog, fn), 0, width, 6), ""]
    for paragraph in text.split("\n\n"):
        lines += [*_wrap(paragraph, 0, width), ""]
    lines += _wrap(BOOLEAN_NOTE, 0, width)
    for p in parameters(fn):
        if p.kind is p.VAR_POSITIONAL:
            lines += _wrap(f"{p.name.upper()}...  {help_of.get(p.name, '')}", 2, width)
    group = None
    for o in command_options(fn):
        if o.group != group:
            group = o.group
            lines += ["", f"{group}:"] if group else [""]
        default = ",".join(map(str, o.default)) if isinstance(o.default, tuple) else o.default
        shown = "none" if default is None else repr(default) if default == "" else default
        kind = "{" + "|".join(o.choices) + "}" if o.choices else type_name(o.kind)
        names = ", ".join(f"--{n}" for n in (o.name, *o.aliases))
        lines += _wrap(f"{names}  {kind}  " + ("(required)" if o.required else f"(default: {shown})"), 2, width, 6)
        lines += _wrap(o.help, 6, width)
    return "\n".join(lines)


def overview(commands: dict[str, Callable[..., Any]], version: str) -> str:
    """`fondtrain --help`: every command with the first paragraph of its docstring."""
    width = max(shutil.get_terminal_size().columns - 1, 40)
    lines = [*_wrap(f"usage: fondtrain COMMAND [ARGS] [--FLAG VALUE ...]   (fondtrain {version})", 0, width, 6),
             "", "commands:"]
    for name, fn in commands.items():
        summary = described(fn)[0].split("\n\n")[0]
        lines += _wrap(f"{name.replace('_', '-'):<18}{summary}", 2, width, 18)
    return "\n".join([*lines, "", *_wrap("Wherever a run folder is taken, pretrained:NAME names a model that "
                                         "ships with fondtrain (e.g. `fondtrain eval pretrained:natural16-ipvae`; "
                                         "its outputs go to runs/pretrained-NAME).", 0, width),
                      *_wrap("`fondtrain COMMAND --help` lists a command's flags; "
                             "`fondtrain --version` prints the version.", 0, width)])
