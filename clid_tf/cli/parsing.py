"""The command line as absl reads it, with one clear line for every mistake.

`parse_flags` is the flags parser of the entry points (app.run's flags_parser): --help
prints the flags by group with their defaults and ranges; a bad flag, value, flagfile or
flagfile line is one `error:` line naming it (with the flagfile's path and line number)
and exit code 2. Flagfiles are expanded here the way absl expands them, so that each
argument remembers the file and line it came from.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import shutil
import sys
import textwrap
from typing import NamedTuple

from absl import flags

from clid_tf.cli import flags as flag_definitions
from clid_tf.cli.flags import FLAGS, HELP_GROUPS, REPO, training_flag_names

_HELP_FLAGS = {"help": "short", "helpshort": "short", "?": "short", "helpfull": "full",
               "helpxml": "xml"}
_MAX_WIDTH = 100


def help_text(groups, *, usage: str, full: bool = False,
              overrides: dict[str, str] | None = None, width: int | None = None) -> str:
    """`usage`, then each (title, flag names) group: every flag with its default, its range
    or choices, and its help; with `full`, absl's own flags after."""
    width = width or max(60, min(_MAX_WIDTH, shutil.get_terminal_size((_MAX_WIDTH, 24)).columns))
    parts = [usage.strip("\n")]
    for title, names in groups:
        parts.append(f"\n{title}:")
        parts.extend(_flag_entry(FLAGS[name], (overrides or {}).get(name), width)
                     for name in names)
    if full:  # then absl's (and any library's) flags, as absl lists them
        for module in sorted(set(FLAGS.flags_by_module_dict()) - {flag_definitions.__name__,
                                                            sys.argv[0]}):
            parts.append("\n" + FLAGS.module_help(module))
    else:
        parts.append("\n--helpfull also lists absl's own flags.")
    return "\n".join(parts) + "\n"


def _flag_entry(flag, help_override: str | None, width: int) -> str:
    """'  --name  default: D; RANGE' then the help text, indented, wrapped to `width`."""
    text = help_override or flag.help
    facts = []
    if flag.default is not None:
        shown = ",".join(flag.default) if isinstance(flag.default, list) else flag.default_as_str
        facts.append(f"default: {shown.strip(chr(39)) or 'empty'}")
    elif not re.search("default|required", text, re.IGNORECASE):
        facts.append("default: none")
    values = getattr(flag.parser, "enum_values", None)
    if values:
        text = text.removeprefix(f"<{'|'.join(values)}>: ")
        facts.append(f"one of {', '.join(values)}")
    elif flag.parser.syntactic_help:
        facts.append(flag.parser.syntactic_help)
    head = f"  --{'[no]' if flag.boolean else ''}{flag.name}  {'; '.join(facts)}"
    wrap = functools.partial(textwrap.wrap, width=width, break_long_words=False,
                             break_on_hyphens=False)
    return "\n".join([*wrap(head, subsequent_indent=" " * 8),
                      *wrap(text, initial_indent=" " * 6, subsequent_indent=" " * 6)])


def _help_asked(args: list[str]) -> str | None:
    """'short', 'full' or 'xml' when the command line asks for help (before any '--')."""
    for arg in args:
        if arg == "--":
            break
        name, _, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name in _HELP_FLAGS and value.lower() in (
                "", "true", "t", "1", "yes", "y"):
            return _HELP_FLAGS[name]
    return None


# ------------------------------------------------------------------------------ parsing
class _Arg(NamedTuple):
    """One command-line argument after flagfile expansion, and where it was written."""
    text: str
    where: str | None  # 'FILE line N' (with the files that included it); None: the command line


def parse_flags(argv: list[str], *, groups=None, help_overrides=None) -> list[str]:
    """The absl flags parser of the entry points (app.run's flags_parser).

    --help/-?/--helpshort print `groups` (default: the training flags, or a tool's own flags
    when they are not defined) after __main__'s docstring, --helpfull adds absl's flags,
    --helpxml is absl's XML; each exits 0. A bad flag, value, flagfile or flagfile line is
    one `error:` line naming it (with the flagfile's path and line) and exit code 2.

    Returns:
      argv[0] and the positional arguments from the command line.
    """
    if groups is None:
        groups = (HELP_GROUPS if training_flag_names() else
                  (("flags", [f.name for f in FLAGS.get_flags_for_module(sys.argv[0])]),))
    asked = _help_asked(argv[1:])
    if asked == "xml":
        FLAGS.write_help_in_xml_format(sys.stdout)
    elif asked:
        usage = sys.modules["__main__"].__doc__ or f"USAGE: {argv[0]} [flags]\n"
        sys.stdout.write(help_text(groups, usage=usage, full=asked == "full",
                                   overrides=help_overrides))
    if asked:
        sys.exit(0)
    args = None
    try:
        args = _expanded(argv[1:])
        _check_values_given(args)
        rest = FLAGS(argv)
    except (flags.Error, ValueError) as error:
        fail(_located(error, argv[0], args))
    _check_flagfile_positionals(args, rest[1:])
    return rest


def _expanded(args: list[str]) -> list[_Arg]:
    """`args` with every --flagfile replaced by its lines, as absl's
    FlagValues.read_flags_from_files does it, each line remembering its file and number.
    A flagfile that cannot be read raises flags.Error naming it and where it was named."""
    out, rest = [], list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("--flagfile", "-flagfile"):
            if not rest:
                raise flags.IllegalFlagValueError("--flagfile with no argument")
            out.extend(_flagfile_lines(os.path.expanduser(rest.pop(0)), None, []))
            continue
        path = flagfile_path(arg)
        if path is not None:
            out.extend(_flagfile_lines(path, None, []))
            continue
        out.append(_Arg(arg, None))
        if arg == "--":
            break
        if not arg.startswith("-"):
            if not FLAGS.is_gnu_getopt():
                break
        elif "=" not in arg and rest and not rest[0].startswith("-"):
            name = arg.lstrip("-")  # '--name value': the value is not a flagfile directive
            if name in FLAGS and not FLAGS[name].boolean:
                out.append(_Arg(rest.pop(0), None))
    return out + [_Arg(arg, None) for arg in rest]


def flagfile_path(text: str) -> str | None:
    """The file of a '--flagfile=FILE' (or '-flagfile=FILE') argument or flagfile line,
    '~' expanded as absl expands it; None for anything else."""
    for prefix in ("--flagfile=", "-flagfile="):
        if text.startswith(prefix):
            return os.path.expanduser(text[len(prefix):].strip())
    return None


def _flagfile_lines(path: str, named_at: str | None, stack: list[str]) -> list[_Arg]:
    """The argument lines of one flagfile, nested flagfiles expanded in place (absl's
    FlagValues._get_flag_file_lines: blank lines and lines starting with # or // skipped;
    a flagfile already being read is skipped, absl warns)."""
    if not path or path in stack:
        return []
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as error:
        raise flags.Error(_unreadable_flagfile(path, named_at, error)) from error
    out = []
    for number, line in enumerate(lines, 1):
        where = f"{path} line {number}" + (f" (included from {named_at})" if named_at else "")
        if line.isspace() or line.startswith(("#", "//")):
            continue
        nested = flagfile_path(line)
        if nested is not None:
            out.extend(_flagfile_lines(nested, where, [*stack, path]))
        else:
            out.append(_Arg(line.strip(), where))
    return out


def _unreadable_flagfile(path: str, named_at: str | None, error: OSError) -> str:
    """'flagfile P (named on F line N) not found relative to CWD ...; run from / did you
    mean ...': the path, where it was named, and where it exists when it does."""
    text = f"flagfile {path}" + (f" (named on {named_at})" if named_at else "")
    if not isinstance(error, FileNotFoundError):
        return f"{text} cannot be read: {error.strerror}"
    if os.path.isabs(path):
        return f"{text} not found"
    text += (f" not found relative to {os.getcwd()} (flagfile paths are relative to the "
             "folder you run in)")
    if os.path.isfile(os.path.join(REPO, path)):
        return f"{text}; run from {REPO}"
    guess = os.path.join(REPO, "flags", os.path.basename(path))
    if os.path.isfile(guess):
        shown = os.path.relpath(guess)
        return f"{text}; did you mean {guess if shown.startswith('..') else shown}?"
    return text


def _check_values_given(args: list[_Arg]) -> None:
    """'--name' of a training flag followed by another flag: absl would take that flag as
    the value (no training flag has values that start with '--')."""
    training = set(training_flag_names())
    for arg, after in zip(args, args[1:]):
        name = arg.text.lstrip("-")
        if (arg.text.startswith("-") and "=" not in arg.text and name in training
                and not FLAGS[name].boolean and after.text.startswith("--")):
            raise _LocatedError(arg, f"--{name} has no value (the next argument, "
                                     f"{after.text}, would be taken as it); write "
                                     f"--{name}=VALUE")


def _check_flagfile_positionals(args: list[_Arg], positionals: list[str]) -> None:
    """A flagfile line that is not a flag is refused with its file and line (absl passes it
    on as a positional argument); positional arguments from the command line are left to
    the program."""
    values, candidates = set(), []
    for i, arg in enumerate(args):
        name = arg.text.lstrip("-")
        if arg.text.startswith("-") and "=" not in arg.text and name in FLAGS and not (
                FLAGS[name].boolean):
            values.add(i + 1)  # '--name value': the next argument is a value
        elif not arg.text.startswith("-") and i not in values:
            candidates.append(arg)
    if [a.text for a in candidates] != positionals:
        return  # cannot tell which line is which: leave them to the program
    for arg in candidates:
        if arg.where:
            fail(f"{arg.where}: {arg.text!r} is not a flag (a flagfile holds --name=value "
                 "lines; # starts a comment)")


class _LocatedError(flags.Error):
    """A bad argument found before absl parses: the argument and the message."""

    def __init__(self, arg: _Arg, message: str):
        super().__init__(message)
        self.arg = arg


def _located(error: Exception, program: str, args: list[_Arg] | None) -> str:
    """The one-line message of a parse error, prefixed by the flagfile line it came from:
    the first argument whose prefix of the command line fails with the same error."""
    message = _message(error)
    if isinstance(error, _LocatedError):
        arg = error.arg
    elif args is None:
        return message
    else:
        arg, wanted = None, str(error)
        for k in range(1, len(args) + 1):
            FLAGS.unparse_flags()
            try:
                FLAGS([program, *(a.text for a in args[:k])])
            except (flags.Error, ValueError) as again:
                if str(again) == wanted:
                    arg = args[k - 1]
                    break
        FLAGS.unparse_flags()
    return message if arg is None or arg.where is None else f"{arg.where}: {message}"


def _message(error: Exception) -> str:
    """absl's message of a parse error, made one line and worded for the user."""
    if isinstance(error, flags.UnrecognizedFlagError):
        name = error.flagname
        close = difflib.get_close_matches(name, [n for n in FLAGS if len(n) > 1], n=1)
        return f"unknown flag --{name}" + (f"; did you mean --{close[0]}" if close else
                                            "; --help lists the flags")
    text = str(error).split("\n")[0]  # several failed validators: the first
    if text.startswith("Missing value for flag "):
        name = text.split()[-1]
        return f"{name} has no value; write {name}=VALUE"
    match = re.match(r"flags? .*?: (--.*)$", text)
    if match:  # a validator's own message, which names the flags
        return match.group(1)
    match = re.match(r"flag --(\w+)=(.*?): (.*)$", text)
    if match and match.group(1) in FLAGS:
        name, value, detail = match.groups()
        if re.fullmatch(r"Flag --\w+ must have a value other than None\.", detail):
            return f"--{name} is required"
        if re.search(r"invalid literal|could not convert|Non-boolean", detail):
            flag = FLAGS[name]
            detail = "expected " + ("true or false" if flag.boolean else
                                    flag.parser.syntactic_help or "another value")
        elif detail.startswith("value should be one of"):
            values = detail.split("<", 1)[-1].rstrip(">").split("|")
            detail = "expected one of " + "|".join(values) + "".join(
                f"; did you mean --{name}={v}" for v in values if v.lower() == value.lower())
        return f"--{name}={value}: {detail}"
    return text


def fail(message: str) -> None:
    """One error line for the user, exit code 2."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)

