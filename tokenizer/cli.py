"""argparse as the command lines of this project use it: no prefix matching, defaults in
the help, and a mistake as two lines: `error: ...` and a hint (a close match for a
misspelt option, else where the options are listed), instead of argparse's usage block.

`python -m tokenizer` uses it, and so do the example scripts (examples/_cli.py): the
tokenizer needs nothing from the rest of the project, so what they share lives here.
"""
import argparse
import difflib
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and shows each option's default, unless it has none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """No prefix matching (`--lr 3` must not mean `--lr-decay-iters 3`); errors in two lines."""

    def __init__(self, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(allow_abbrev=False, **kwargs)

    def _get_values(self, action, arg_strings):
        # argparse takes `--flag=--` as a flag given no value at all (it drops the '--')
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one argument")
        return super()._get_values(action, arg_strings)

    def error(self, message):
        unknown = _unknown_options(message)
        if unknown:
            message = f"unknown option{'s' * (len(unknown) > 1)} {', '.join(unknown)}"
        print(f"error: {message}\nhint: {self.hint(unknown, message)}", file=sys.stderr)
        sys.exit(2)

    def hint(self, unknown, message):
        """A close match for the first unknown option or invalid choice, and where --help is."""
        help_line = f"`{self.prog} --help` lists the options"
        if unknown:
            name = unknown[0].partition("=")[0].replace("_", "-")
            longer = sorted((o for o in self.option_names() if o.startswith(name)), key=len)   # --temp: --temperature
            match = longer[:1] or difflib.get_close_matches(name, self.option_names(), n=1, cutoff=0.6)
        else:
            choice, _, choices = message.partition("invalid choice: ")[2].partition(" (choose from ")
            match = difflib.get_close_matches(choice.strip("'"), [c.strip(" ')") for c in choices.split(",")],
                                              n=1, cutoff=0.6) if choices else []
        return f"did you mean {match[0]}? ({help_line})" if match else help_line

    def option_names(self):
        """Every long option of this parser and of its subcommands' parsers."""
        names = [s for s in self._option_string_actions if s.startswith("--")]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    names += [s for s in sub._option_string_actions if s.startswith("--")]
        return list(dict.fromkeys(names))


def _unknown_options(message):
    """The options named by argparse's 'unrecognized arguments: ...' (values left out)."""
    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return []
    words = message[len(prefix):].split()
    return [w for w in words if w.startswith("-")] or words
