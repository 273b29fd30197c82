"""The ``aevis`` command line: one sub-command per module that owns the work.

Each sub-command module exposes ``add_parser(subparsers)`` which registers its parser
and sets ``func`` (a callable taking the parsed args and returning an exit code).
This module gives every sub-command the same shared options (``--device``, ``--json``,
``--progress/--no-progress``), the same help layout (plain text, each default said
once) and the same error reporting: one line on stderr, or with ``--json`` one JSON
object ``{"error": ..., "command": ..., "exit_code": ...}`` on stdout, with a non-zero exit.
"""

import argparse
import importlib
import json
import re
import sys
import warnings

from tensorboard_plugin_aevis import __version__
from tensorboard_plugin_aevis.errors import UserError

# module name (inside tensorboard_plugin_aevis) for each sub-command, in help order
COMMAND_MODULES = (
    "commands.demo",
    "commands.analyze",
    "commands.contribution",
    "commands.evaluate",
    "commands.bench",
)
USAGE_ERROR = 2  # bad arguments or a problem the user can fix
FAILURE = 1  # anything else (reported as one JSON object under --json)


def check_device(device: str) -> None:
    """Raise UserError unless ``device`` is ``cpu`` or an available ``cuda[:N]``."""
    if not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"--device {device!r} is not supported; use cpu or cuda[:N]")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu")


def plain_text(text: str) -> str:
    """Docstring text for a terminal: reST roles (``:func:`..models.load_model```) and literals unwrapped."""
    text = re.sub(r":[a-z]+:`~?\.*([^`]+)`", r"\1", text)
    return re.sub(r"``([^`]+)``", r"\1", text)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's paragraphs; says an option's default once (unless its help already does)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with errors reported as one JSON object when the command line holds ``--json``."""

    json_errors = False

    def error(self, message):
        if ArgumentParser.json_errors:
            print(json.dumps({"error": message, "command": self.prog, "exit_code": USAGE_ERROR}))
            sys.exit(USAGE_ERROR)
        super().error(message)


def add_shared_options(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--json`` and ``--progress/--no-progress``, the same on every sub-command."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout (errors too) instead of text")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars on stderr (default: on when stderr is a terminal)")


def add_optimiser_arguments(parser) -> None:
    """``--warmup`` and ``--multiplicative/--no-multiplicative``: the constrained method's optimiser options
    (``aevis analyze`` and ``aevis evaluate``); unset, the method's defaults apply."""
    parser.add_argument("--warmup", type=int, default=None, metavar="W",
                        help="constrained method: weight the fidelity term's gradient by t/W in the first W steps of each fit, "
                             "then restart Adam's moments (default: the method's, 5; 0: off; docs/method.md)")
    parser.add_argument("--multiplicative", action=argparse.BooleanOptionalAction, default=None,
                        help="constrained method: apply Adam's step s as z*exp(-s) (mirror descent) instead of z-s "
                             "(default: the method's, on; --warmup 0 --no-multiplicative is the former plain Adam, "
                             "docs/method.md). The DGR baseline keeps its own optimiser")


def optimiser_options(args, methods) -> dict:
    """``{"constrained": {...}}`` (keywords of ``extract_datapaths``) holding the options of ``--warmup`` /
    ``--multiplicative/--no-multiplicative`` that were given, or {} when neither is.

    Raises:
        UserError: a negative ``--warmup``, or either option while ``methods`` lacks the constrained method.
    """
    given = {key: getattr(args, key) for key in ("warmup", "multiplicative") if getattr(args, key) is not None}
    if given.get("warmup", 0) < 0:
        raise UserError(f"--warmup {args.warmup}: give the number of warm-up steps, 0 or more (0: off)")
    if not given:
        return {}
    if "constrained" not in methods:
        raise UserError("--warmup and --multiplicative change the constrained method's optimiser; the DGR baseline keeps "
                        "its own: add the constrained method or drop them")
    return {"constrained": given}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="aevis",
        description="Explain why adversarial examples fool a CNN: extract datapaths and log them to TensorBoard.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aevis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"tensorboard_plugin_aevis.{name}").add_parser(sub)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
        command.description = plain_text(command.description or "")
        for action in command._actions:
            action.help = plain_text(action.help) if action.help else action.help
        add_shared_options(command)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"aevis: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    ArgumentParser.json_errors = "--json" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return USAGE_ERROR
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    with warnings.catch_warnings():
        warnings.simplefilter("default", UserWarning)
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except UserError as e:
            return _report(args, str(e), USAGE_ERROR)
        except KeyboardInterrupt:
            return _report(args, "interrupted", 130)
        except Exception as e:  # noqa: BLE001 - under --json every failure is one JSON object
            if not args.json:
                raise
            return _report(args, f"{type(e).__name__}: {e}", FAILURE)


def _report(args, message: str, code: int) -> int:
    if args.json:
        print(json.dumps({"error": message, "command": args.command, "exit_code": code}))
    else:
        print(f"aevis {args.command}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
