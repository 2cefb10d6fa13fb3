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
import importlib
import os
import re
import shutil
import sys
import textwrap
from typing import NamedTuple

from absl import flags

from clid_tf import trainers
from clid_tf.cli import flags as flag_definitions
from clid_tf.cli.flags import FLAGS, REPO, help_groups, training_flag_names

_HELP_FLAGS = {"help": "short", "helpshort": "short", "?": "short", "helpfull": "full",
               "helpxml": "xml"}
_MAX_WIDTH = 100
# The flags absl itself defines (app.run's help, debugging and logging flags): absl writes
# them into every flags.cfg; a run's flags.cfg is read without them.
ABSL_OWN_FLAGS = frozenset({
    "help", "helpfull", "helpshort", "helpxml", "?", "only_check_args", "only_check_flags",
    "pdb", "pdb_post_mortem", "run_with_pdb", "run_with_profiling", "profile_file",
    "use_cprofile_for_profiling", "logtostderr", "alsologtostderr", "log_dir", "verbosity",
    "v", "logger_levels", "stderrthreshold", "showprefixforinfo", "undefok"})
# absl's flags that act (profile, debug, write logs, stop early): from the command line
# only; a flagfile that sets one (to anything but its off value) is refused.
ABSL_ACTING_FLAGS = frozenset({"profile_file", "run_with_profiling", "run_with_pdb", "pdb",
                               "pdb_post_mortem", "use_cprofile_for_profiling",
                               "only_check_args", "only_check_flags", "log_dir"})
# What --extensions takes: dotted module names, never a path.
MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
# Lines all flagfiles of one command may expand to: a file that includes another twice,
# nested, doubles at every level; past this the command is refused before absl reads it.
MAX_FLAGFILE_LINES = 20_000


def help_text(groups, *, usage: str, full: bool = False,
              overrides: dict[str, str] | None = None, width: int | None = None,
              trainer: str | None = None) -> str:
    """`usage`, then each (title, flag names) group: every flag with its default, its range
    or choices, and its help; the defaults each trainer sets (only `trainer`'s, shown as
    its flags' defaults, when one is named); with `full`, absl's own flags after."""
    width = width or max(60, min(_MAX_WIDTH, shutil.get_terminal_size((_MAX_WIDTH, 24)).columns))
    parts = [usage.strip("\n")]
    shown = set(training_flag_names())
    spec = trainers.get(trainer) if trainer in trainers.names() else None
    for title, names in groups:
        parts.append(f"\n{title}:")
        parts.extend(_flag_entry(FLAGS[name], (overrides or {}).get(name), width,
                                 None if spec is None or name not in spec.defaults
                                 else _shown_default(spec.defaults[name]))
                     for name in names)
    if spec is None and any(name in shown for _, names in groups for name in names):
        parts.append("\ndefaults each trainer sets (--trainer=NAME --help shows its flags "
                     "only):")
        parts.extend(textwrap.fill(f"--trainer={t.name}: " + ", ".join(
            f"--{name}={_shown_default(value)}" for name, value in t.defaults.items()),
            width, initial_indent="  ", subsequent_indent=" " * 6)
            for t in trainers.registered() if t.defaults)
    if full:  # then absl's (and any library's) flags, as absl lists them
        for module, defined in sorted(FLAGS.flags_by_module_dict().items()):
            if module != sys.argv[0] and not shown & {flag.name for flag in defined}:
                parts.append("\n" + FLAGS.module_help(module))
    else:
        parts.append("\n--helpfull also lists absl's own flags.")
    return "\n".join(parts) + "\n"


def _shown_default(value) -> str:
    """A trainer's default as --help shows it (a rule on other flags by its name)."""
    if callable(value):
        return f"({(value.__doc__ or 'follows the other flags').strip()})"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _flag_entry(flag, help_override: str | None, width: int,
                default: str | None = None) -> str:
    """'  --name  default: D; RANGE' then the help text, indented, wrapped to `width`
    (`default`: the chosen trainer's, shown instead of the flag's own)."""
    text = help_override or flag.help
    facts = []
    if default is not None:
        facts.append(f"default: {default} (the trainer's)")
    elif flag.default is not None:
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


def _trainer_named(args: list[str]) -> str | None:
    """The registered trainer the command line's --trainer names (the last), for --help;
    None for none."""
    named = _last_value("trainer", args)
    return named if named in trainers.names() else None


def _last_value(name: str, args: list[str]) -> str | None:
    """The value of the last '--name=V' or '--name V' among `args` (before a '--'); None
    when absent."""
    found = None
    for arg, after in zip(args, [*args[1:], ""]):
        if arg == "--":
            break
        if arg.startswith((f"--{name}=", f"-{name}=")):
            found = arg.split("=", 1)[1]
        elif arg in (f"--{name}", f"-{name}"):
            found = after
    return found


# ------------------------------------------------------------------------------ parsing
class _Arg(NamedTuple):
    """One command-line argument after flagfile expansion, and where it was written."""
    text: str
    where: str | None  # 'FILE line N' (with the files that included it); None: the command line


def parse_flags(argv: list[str], *, groups=None, help_overrides=None,
                saved: list[_Arg] = ()) -> list[str]:
    """The absl flags parser of the entry points (app.run's flags_parser).

    --help/-?/--helpshort print `groups` (default: the training flags, or a tool's own flags
    when they are not defined) after __main__'s docstring, --helpfull adds absl's flags,
    --helpxml is absl's XML; each exits 0. A bad flag, value, flagfile or flagfile line is
    one `error:` line naming it (with the flagfile's path and line) and exit code 2.
    `saved`: flags read as data (`run_flag_arguments`), parsed before the command line's.

    Returns:
      argv[0] and the positional arguments from the command line.
    """
    if training_flag_names() and _help_asked(argv[1:]):  # --help lists what they register
        try:
            import_extensions([_Arg(arg, None) for arg in argv[1:]])
        except flags.Error as error:
            fail(str(error))
    trainer = _trainer_named(argv[1:])
    if groups is None:
        groups = (help_groups(trainer) if training_flag_names() else
                  (("flags", [f.name for f in FLAGS.get_flags_for_module(sys.argv[0])]),))
    asked = _help_asked(argv[1:])
    if asked == "xml":
        FLAGS.write_help_in_xml_format(sys.stdout)
    elif asked:
        usage = sys.modules["__main__"].__doc__ or f"USAGE: {argv[0]} [flags]\n"
        sys.stdout.write(help_text(groups, usage=usage, full=asked == "full",
                                   overrides=help_overrides, trainer=trainer))
    if asked:
        sys.exit(0)
    args = None
    try:
        args = [*saved, *_expanded(argv[1:])]
        if training_flag_names():
            import_extensions(args[len(saved):], saved=args[:len(saved)])
        _check_values_given(args)
        rest = FLAGS([argv[0], *(a.text for a in saved), *argv[1:]])
    except (flags.Error, ValueError) as error:
        fail(_located(error, argv[0], args))
    _check_flagfile_positionals(args, rest[1:])
    return rest


def import_extensions(given: list[_Arg], *, saved: list[_Arg] = ()) -> None:
    """Imports the modules of --extensions, which register their meta-nets, sources and
    trainers, and defines the flags of the trainers they add, before absl checks the
    values. Only the command line imports code: the modules a flagfile line names (a run's
    flags.cfg given back with --flagfile, say) or `saved` (a run's flags.cfg read as data)
    must be named on the command line too. flags.Error (one line) for a module that is not
    named there, missing, or fails to import."""
    wanted = _last_list("extensions", [a for a in given if a.where is None])
    for arg in [*saved, *given]:
        recorded = _last_list("extensions", [arg]) if arg.where is not None else []
        if [name for name in recorded if name not in wanted]:
            raise flags.Error(f"{arg.where.rsplit(' line', 1)[0]} names --extensions="
                              f"{','.join(recorded)}: code is imported only when the command "
                              f"line names it; add --extensions={','.join(recorded)}")
    for name in wanted:
        if not MODULE_NAME.fullmatch(name):
            raise flags.Error(f"--extensions={name}: --extensions takes module names "
                              "(my_metanet, mypackage.sources), not paths")
        try:
            importlib.import_module(name)
        except Exception as error:  # pylint: disable=broad-except
            detail = (str(error).splitlines() or [""])[0]
            raise flags.Error(f"--extensions={name}: cannot import it "
                              f"({type(error).__name__}: {detail})") from error
    flag_definitions.define_flags()  # the flags of trainers the modules registered


def _last_list(name: str, args: list[_Arg]) -> list[str]:
    """The value of the last '--name=a,b' among `args`, split; [] when absent."""
    value = _last_value(name, [a.text for a in args]) or ""
    return [v.strip() for v in value.split(",") if v.strip()]


def run_flag_arguments(text: str, path: str) -> list[_Arg]:
    """A run's flags.cfg read as data: the training flags it sets, as arguments that
    remember their line; absl's own flags are not read from it (a flags.cfg names them
    only because absl writes every flag), so a line such as --profile_file=PATH or
    --run_with_pdb has no effect. ValueError (one line, with the line number) for a
    --flagfile line, a line that is not --name[=value], or an unknown flag."""
    training = set(training_flag_names())
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "//")):
            continue
        where = f"{path} line {number}"
        name = line[2:].split("=", 1)[0] if line.startswith("--") else None
        if name is None or not name:
            raise ValueError(f"{where}: {line[:80]!r} is not a --name=value line")
        if name == "flagfile":
            raise ValueError(f"{where}: a run's flags.cfg holds its training flags, not "
                             "--flagfile (it is read as data, never as a flagfile)")
        boolean_name = name[2:] if name.startswith("no") and "=" not in line else None
        if name in training or boolean_name in training:
            found.append(_Arg(line, where))
        elif not {name, boolean_name} & (set(FLAGS) | ABSL_OWN_FLAGS):
            raise ValueError(f"{where}: unknown flag --{name}")
    return found


def _expanded(args: list[str]) -> list[_Arg]:
    """`args` with every --flagfile replaced by its lines, as absl's
    FlagValues.read_flags_from_files does it, each line remembering its file and number.
    A flagfile that cannot be read, or flagfiles that expand to more than
    MAX_FLAGFILE_LINES lines, raise flags.Error naming it and where it was named."""
    out, rest = [], list(args)
    budget = _Budget()
    while rest:
        arg = rest.pop(0)
        if arg in ("--flagfile", "-flagfile"):
            if not rest:
                raise flags.IllegalFlagValueError("--flagfile with no argument")
            out.extend(_flagfile_lines(os.path.expanduser(rest.pop(0)), None, [], budget))
            continue
        path = flagfile_path(arg)
        if path is not None:
            out.extend(_flagfile_lines(path, None, [], budget))
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


class _Budget:
    """The lines the flagfiles of one command have expanded to so far, and each file's
    text read once."""

    def __init__(self):
        self.lines = 0
        self.texts: dict[str, list[str]] = {}


def _flagfile_lines(path: str, named_at: str | None, stack: list[str],
                    budget: _Budget) -> list[_Arg]:
    """The argument lines of one flagfile, nested flagfiles expanded in place (absl's
    FlagValues._get_flag_file_lines: blank lines and lines starting with # or // skipped;
    a flagfile already being read is skipped, absl warns)."""
    if not path or path in stack:
        return []
    if path not in budget.texts:
        try:
            with open(path) as f:
                budget.texts[path] = f.readlines()
        except (OSError, UnicodeDecodeError) as error:
            raise flags.Error(_unreadable_flagfile(path, named_at, error)) from error
    out = []
    for number, line in enumerate(budget.texts[path], 1):
        budget.lines += 1
        if budget.lines > MAX_FLAGFILE_LINES:
            raise flags.Error(f"the flagfiles expand to more than {MAX_FLAGFILE_LINES} lines "
                              f"({path} is read again and again: a file that includes "
                              "another more than once, nested); include each file once")
        where = f"{path} line {number}" + (f" (included from {named_at})" if named_at else "")
        if line.isspace() or line.startswith(("#", "//")):
            continue
        nested = flagfile_path(line)
        if nested is not None:
            out.extend(_flagfile_lines(nested, where, [*stack, path], budget))
        else:
            _check_not_acting(line.strip(), where)
            out.append(_Arg(line.strip(), where))
    return out


def _check_not_acting(line: str, where: str) -> None:
    """flags.Error when a flagfile line turns on one of ABSL_ACTING_FLAGS (a profile
    written to any path, a debugger, log files): a flagfile holds settings, and a run's
    flags.cfg may come from someone else."""
    name, _, value = line.lstrip("-").partition("=")
    if name in ABSL_ACTING_FLAGS and value.strip().lower() not in ("", "false", "0"):
        raise _LocatedError(_Arg(line, where), f"--{name} acts (it writes files or stops "
                                               "the run) and is taken from the command line "
                                               "only, not from a flagfile")


def _unreadable_flagfile(path: str, named_at: str | None, error: Exception) -> str:
    """'flagfile P (named on F line N) not found relative to CWD ...; run from / did you
    mean ...': the path, where it was named, and where it exists when it does."""
    text = f"flagfile {path}" + (f" (named on {named_at})" if named_at else "")
    if isinstance(error, UnicodeDecodeError):
        return f"{text} cannot be read: it is not text"
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
    the shortest prefix of the arguments that fails with the same error (a bisection: a
    prefix that holds the bad argument fails as the whole does, so a few parses find it
    among thousands of lines)."""
    message = _message(error)
    if isinstance(error, _LocatedError):
        arg = error.arg
    elif args is None:
        return message
    else:
        wanted = str(error)

        def fails_alike(k: int) -> bool:
            FLAGS.unparse_flags()
            try:
                FLAGS([program, *(a.text for a in args[:k])])
            except (flags.Error, ValueError) as again:
                return str(again) == wanted
            return False

        low, high = 0, len(args)  # fails_alike(high) holds, unless no prefix fails alike
        arg = None
        if fails_alike(high):
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (low, middle) if fails_alike(middle) else (middle, high)
            arg = args[high - 1]
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

