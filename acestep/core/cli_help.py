"""One look for every command line: each flag's default in --help, required flags marked, the program named
the way it was started (`python -m acestep.plan`, `trainer_new.py`), so usage lines can be copied, and output
that never crashes on a song name the console's encoding lacks."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to each flag's help, "(required)" to required flags.

    Left alone: help that already speaks of its default (e.g. "default: the official one"), a default of None
    (the help must say what happens then), switches that are off unless given, and required positionals.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required and action.option_strings:
            return f"{text} (required)"
        if "default" in text.lower() or action.default in (None, argparse.SUPPRESS):
            return text
        if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
            return text  # store_true / store_false / store_const: "not given" is the default
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        return f"{text} (default: %(default)s)"


def invoked_prog(name: str | None = None) -> str:
    """`python -m acestep.X` when started with -m, else `name` (the wrapping script), else argv[0]'s file name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", "") or ""
    if name.split(".")[0] == "acestep":
        return "python -m " + name.removesuffix(".__main__")
    if name:
        return name
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "acestep"


def tolerate_unencodable_output() -> None:
    """Print characters the console cannot encode as \\u escapes instead of raising UnicodeEncodeError.

    A Windows console or log redirected with a legacy code page (cp1252) cannot encode e.g. a Japanese file
    name; one such name in a skipped-file table must not end the run.
    """
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        if not encoding.startswith("utf") and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def make_parser(description: str, name: str | None = None, **kwargs: Any) -> argparse.ArgumentParser:
    """An ArgumentParser with HelpFormatter and the invoked program name; output made encoding-proof first.

    `name` names the program when it was not started with `python -m`: the top-level script that wraps this
    command line (e.g. "trainer_new.py"), or "python -m acestep.X" for a module without one; it is also what
    tests that call main() directly see.
    """
    tolerate_unencodable_output()
    kwargs.setdefault("formatter_class", HelpFormatter)
    return argparse.ArgumentParser(prog=invoked_prog(name), description=description, **kwargs)


def add_command(commands: Any, name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand parser that formats its help as its parent does."""
    kwargs.setdefault("formatter_class", HelpFormatter)
    return commands.add_parser(name, help=help_text, description=help_text, **kwargs)
