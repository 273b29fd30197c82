"""The ``aevis`` command line: one sub-command per module that owns the work.

Each sub-command module exposes ``add_parser(subparsers)`` which registers its parser
and sets ``func`` (a callable taking the parsed args and returning an exit code).
"""

import argparse
import importlib
import sys

from tensorboard_plugin_aevis.errors import UserError

# module name (inside tensorboard_plugin_aevis) for each sub-command, in help order
COMMAND_MODULES = (
    "commands.demo",
    "commands.analyze",
    "commands.contribution",
    "commands.evaluate",
    "commands.bench",
)


def check_device(device: str) -> None:
    """Raise UserError unless ``device`` is ``cpu`` or an available ``cuda[:N]``."""
    if not (device == "cpu" or device.startswith("cuda")):
        raise UserError(f"--device {device!r} is not supported; use cpu or cuda[:N]")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aevis",
        description="Explain why adversarial examples fool a CNN: extract datapaths and log them to TensorBoard.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"tensorboard_plugin_aevis.{name}").add_parser(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"aevis {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aevis: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
