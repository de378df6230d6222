"""The parser behind every `fondtrain` command: typed flags, help, and commands from methods.

A command is a method of a class (fondtrain.cli.FondtrainCLI): its annotations are the
flags' real types (typing.get_type_hints), its docstring's first paragraph the summary and
its `Args:` section one description per parameter. Parameters without a default are
positional words; the others are `--flags` (or, in order, positional words too).

Parsing rules: exact names only (no abbreviations; `-` and `_` are the same letter),
`--flag value` or `--flag=value`, booleans as `--flag`, `--noflag` or `--flag
true|false|yes|no|1|0` (any case), `none` for an optional value, tuples as `0.9,0.999`.
Every bad flag or value raises UserError with one sentence, before the command runs.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fondtrain import __version__
from fondtrain.errors import UserError

TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1"), ("false", "no", "0")
HELP_FLAGS = ("-h", "--help")


@dataclass(frozen=True)
class Option:
    """One flag: `--name VALUE` of type `kind` (a real type such as int or tuple[float, ...]).

    `fields` lists the (section, field) pairs a training flag sets (seed sets three);
    `required`: a command's parameter without a default (a positional word or this flag).
    """

    name: str
    kind: Any
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    fields: tuple[tuple[str, str], ...] = ()
    group: str = ""
    required: bool = False


# ------------------------------------------------------------------ types and values

def split_optional(kind: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed) for `X | None` / Optional[X]."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"flag type {kind} must be one type or that type | None")
        return args[0], True
    return kind, False


def type_name(kind: Any) -> str:
    """How a type reads in the help: int, float, str, bool, float,float, float,... ."""
    base, optional = split_optional(kind)
    if typing.get_origin(base) is tuple:
        args = typing.get_args(base)
        name = f"{args[0].__name__},..." if args[-1] is Ellipsis else ",".join(a.__name__ for a in args)
    else:
        name = getattr(base, "__name__", str(base))
    return f"{name} | none" if optional else name


def _scalar(text: Any, kind: Any) -> Any:
    """One value of type kind (bool, int, float, str) from a string or a YAML value; ValueError if not."""
    if kind is bool:
        if isinstance(text, bool):
            return text
        word = str(text).strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise ValueError(text)
    if kind is int:
        if isinstance(text, bool):
            raise ValueError(text)
        if isinstance(text, int):
            return text
        if isinstance(text, str) and text.strip().lstrip("+-").replace("_", "").isdigit():
            return int(text)
        as_float = float(text)  # 1e5 is a fine count, 2.5 is not
        if not as_float.is_integer():
            raise ValueError(text)
        return int(as_float)
    if kind is float:
        if isinstance(text, bool):
            raise ValueError(text)
        return float(text)
    if kind is str:
        return str(text)
    raise TypeError(f"flags cannot hold values of type {kind}")


def convert(name: str, kind: Any, value: Any, choices: tuple[str, ...] = ()) -> Any:
    """`value` (a string from the command line, or a YAML value) as type `kind`; UserError if not."""
    base, optional = split_optional(kind)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() == "none"):
        if optional:
            return None
        raise UserError(f"--{name} needs a value of type {type_name(kind)}, not none.")
    if typing.get_origin(base) is tuple:
        return _convert_tuple(name, base, value)
    try:
        out = _scalar(value, base)
    except (TypeError, ValueError):
        hint = " (true/false, yes/no or 1/0)" if base is bool else ""
        raise UserError(f"--{name} got {value!r}, which is not a valid {type_name(kind)}{hint}.") from None
    if choices and out not in choices:
        close = difflib.get_close_matches(str(out), choices, n=1)
        guess = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"--{name} {out!r} is not one of {', '.join(choices)}{guess}.")
    return out


def _convert_tuple(name: str, kind: Any, value: Any) -> tuple:
    args = typing.get_args(kind)
    if isinstance(value, str):
        items = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
    else:
        items = list(value) if isinstance(value, list | tuple) else [value]
    fixed = args[-1] is not Ellipsis
    if fixed and len(items) != len(args):
        example = ",".join(["x"] * len(args))
        raise UserError(f"--{name} needs {len(args)} numbers separated by a comma ({example}), "
                        f"got {value!r}.")
    kinds = args if fixed else [args[0]] * len(items)
    try:
        return tuple(_scalar(v, k) for v, k in zip(items, kinds, strict=True))
    except (TypeError, ValueError):
        raise UserError(f"--{name} got {value!r}, which is not a valid {type_name(kind)}.") from None


# ------------------------------------------------------------------ the parser

class Parsed(typing.NamedTuple):
    positionals: list[str]
    values: dict[str, Any]  # option name -> converted value (only the flags given)


def wants_help(argv: list[str]) -> bool:
    """-h or --help among the flags (before a `--`)."""
    head = argv[:argv.index("--")] if "--" in argv else argv
    return any(a in HELP_FLAGS for a in head)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def unknown_option(flag: str, names: list[str], command: str) -> UserError:
    close = difflib.get_close_matches(flag.lstrip("-").replace("-", "_"), names, n=1, cutoff=0.6)
    guess = f" (did you mean --{close[0]}?)" if close else ""
    return UserError(f"unknown option {flag}{guess}: `{command} --help` lists the options.")


def parse_flags(argv: list[str], options: list[Option], command: str) -> Parsed:
    """Split argv into positional words and typed flag values; exact flag names only."""
    lookup = {o.name: o for o in options} | {a: o for o in options for a in o.aliases}
    positionals: list[str] = []
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "--":
            positionals.extend(argv[i:])
            break
        if not word.startswith("-") or _is_number(word):
            positionals.append(word)
            continue
        raw_name, has_value, value = word.lstrip("-").partition("=")
        name = raw_name.replace("-", "_")
        option = lookup.get(name) if word.startswith("--") else None
        if option is None and name.startswith("no") and not has_value and word.startswith("--"):
            negated = lookup.get(name[2:].lstrip("_"))  # --noprobe, --no-probe, --no_probe
            if negated is not None and split_optional(negated.kind)[0] is bool:
                values[negated.name] = False
                continue
        if option is None:
            raise unknown_option(word.partition("=")[0], sorted(lookup), command)
        if not has_value:
            following = argv[i] if i < len(argv) else None
            if split_optional(option.kind)[0] is bool:
                takes = following is not None and following.lower() in TRUE_WORDS + FALSE_WORDS
                value = argv[i] if takes else "true"
                i += takes
            elif following is None or (following.startswith("--") and following != "--"):
                raise UserError(f"--{name} needs a value ({type_name(option.kind)}).")
            else:
                value = following
                i += 1
        values[option.name] = convert(name, option.kind, value, option.choices)
    return Parsed(positionals, values)


def format_options(options: list[Option]) -> str:
    """The flag table: per option its names, type or choices, default and description."""
    lines: list[str] = []
    group = None
    for o in options:
        if o.group != group:
            group = o.group
            lines.append(f"\n{group}:" if group else "")
        names = ", ".join(f"--{n}" for n in (o.name, *o.aliases))
        kind = "{" + "|".join(o.choices) + "}" if o.choices else type_name(o.kind)
        default = o.default
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default)
        shown = "none" if default is None else repr(default) if default == "" else default
        lines.append(f"  {names}  {kind}  " + ("(required)" if o.required else f"(default: {shown})"))
        lines.append(f"      {o.help}")
    return "\n".join(lines)


BOOLEAN_NOTE = ("Booleans: --flag, --noflag or --flag true|false|yes|no|1|0; `none` clears an "
                "optional value; names are exact (no abbreviations).")


def own_flags(method: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a command that receives its raw argv and parses it itself (train)."""
    method.own_flags = True
    return method


# ------------------------------------------------------------------ commands

def commands(cli: type) -> dict[str, Callable[..., Any]]:
    """Command name -> the method of class `cli` (unbound), in definition order."""
    return {name: fn for name, fn in vars(cli).items()
            if callable(fn) and not name.startswith("_")}


def _docstring(fn: Callable[..., Any]) -> tuple[str, dict[str, str]]:
    """(the text before `Args:`, parameter -> its one-line description)."""
    doc = inspect.getdoc(fn) or ""
    text, _, args = doc.partition("\nArgs:\n")
    described: dict[str, str] = {}
    name = None
    for line in args.splitlines():
        head, sep, rest = line.strip().partition(":")
        if sep and line.startswith("    ") and not line.startswith("     ") and head.isidentifier():
            name = head
            described[name] = rest.strip()
        elif name and line.strip():
            described[name] += " " + line.strip()
    return text.strip(), described


def command_options(fn: Callable[..., Any]) -> list[Option]:
    """The flags of a command, from its signature (real types) and its docstring's Args."""
    hints = typing.get_type_hints(fn)
    _, described = _docstring(fn)
    out = []
    for p in list(inspect.signature(fn).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        required = p.default is p.empty
        out.append(Option(p.name, hints[p.name], None if required else p.default,
                          described.get(p.name, ""), required=required))
    return out


def _usage(name: str, fn: Callable[..., Any]) -> str:
    """`usage: fondtrain NAME RUN OUT [--FLAG VALUE ...]`: the positional words a command takes."""
    words = []
    for i, p in enumerate(list(inspect.signature(fn).parameters.values())[1:]):
        if p.kind is p.VAR_POSITIONAL:
            words.append(f"{p.name.upper()}...")
        elif p.default is p.empty:
            words.append(p.name.upper())
        elif i == 0:  # an optional first parameter reads as a positional word (eval RUN)
            words.append(f"[{p.name.upper()}]")
    return " ".join(["usage: fondtrain", name.replace("_", "-"), *words, "[--FLAG VALUE ...]"])


def command_help(name: str, fn: Callable[..., Any]) -> str:
    text, described = _docstring(fn)
    positional = [p for p in list(inspect.signature(fn).parameters.values())[1:]
                  if p.kind is p.VAR_POSITIONAL]
    extra = "".join(f"\n  {p.name.upper()}...  {described.get(p.name, '')}" for p in positional)
    return f"{_usage(name, fn)}\n\n{text}\n\n{BOOLEAN_NOTE}{extra}\n{format_options(command_options(fn))}"


def overview(cli: type) -> str:
    lines = [f"usage: fondtrain COMMAND [ARGS] [--FLAG VALUE ...]   (fondtrain {__version__})", "",
             "commands:"]
    for name, fn in commands(cli).items():
        summary = " ".join((inspect.getdoc(fn) or "").split("\n\n")[0].split())
        lines.append(f"  {name.replace('_', '-'):<18}{summary}")
    lines += ["", "`fondtrain COMMAND --help` lists a command's flags; `fondtrain --version` "
              "prints the version."]
    return "\n".join(lines)


def bind_arguments(name: str, fn: Callable[..., Any], words: list[str], values: dict[str, Any]):
    """Positional words and flag values -> (args, kwargs) for fn, converted to their types."""
    hints = typing.get_type_hints(fn)
    args: list[Any] = []
    kwargs = dict(values)
    words = list(words)
    for p in list(inspect.signature(fn).parameters.values())[1:]:
        if p.kind is p.VAR_POSITIONAL:
            args.extend(convert(p.name, hints[p.name], w) for w in words)
            words = []
        elif p.name in kwargs or p.kind is p.KEYWORD_ONLY:
            if p.default is p.empty and p.name not in kwargs:
                raise UserError(f"fondtrain {name} needs --{p.name}: `fondtrain {name} --help` "
                                "explains it.")
        elif words:
            kwargs[p.name] = convert(p.name, hints[p.name], words.pop(0))
        elif p.default is p.empty:
            raise UserError(f"fondtrain {name} needs {p.name.upper()}: `fondtrain {name} --help` "
                            "explains it.")
    if words:
        raise UserError(f"fondtrain {name} got an extra argument {words[0]!r}: "
                        f"`fondtrain {name} --help` lists its arguments.")
    return args, kwargs


def dispatch(cli: type, argv: list[str]) -> Any:
    """Run command argv[0] (a method of class `cli`) with the rest of argv; what it returns.

    `--help` and `--version` print and return None.
    """
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(overview(cli))
        return None
    if argv[0] == "--version":
        print(f"fondtrain {__version__}")
        return None
    table = commands(cli)
    name = argv[0].replace("-", "_")
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        guess = f" (did you mean {close[0].replace('_', '-')}?)" if close else ""
        raise UserError(f"unknown command {argv[0]!r}{guess}: `fondtrain --help` lists the commands.")
    fn = table[name]
    method = getattr(cli(), name)
    if getattr(fn, "own_flags", False):
        return method(*argv[1:])
    if wants_help(argv[1:]):
        print(command_help(name, fn))
        return None
    command = f"fondtrain {argv[0]}"
    parsed = parse_flags(argv[1:], command_options(fn), command)
    args, kwargs = bind_arguments(argv[0], fn, parsed.positionals, parsed.values)
    return method(*args, **kwargs)
